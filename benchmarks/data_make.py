"""`maskdepth data make` speed: samples/s with N workers on a slice of the seed preset, extrapolated to the whole
400,000-sample preset, plus a per-stage profile of one shard in one process (compose, JPEG, PNG, tar).
Writes benchmarks/results/data_make.json (data_make-quick.json with --quick).

    python benchmarks/data_make.py                 # seed preset, shards 0:9 (8,000 timed samples at 192x192), 2 workers
    python benchmarks/data_make.py --quick         # tiny smoke run

Target: the whole seed preset in <= 10 minutes on a 2-core machine, i.e. >= 700 samples/s written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def stage_profile(root: Path, plan, index: int) -> dict:
    """CPU seconds per sample of each stage of building shard `index` (the steps of make_render.build_shard)."""
    import torch

    from maskdepth.codecs import encode_depth_png, encode_jpeg, encode_png
    from maskdepth.data import make_render
    from maskdepth.data.banks import STREAM_SHARD, seed_for
    from maskdepth.data.compose import sample_placements
    from maskdepth.data.format import DEPTH_SCALE
    from maskdepth.data.make_plan import JPEG_QUALITY
    from maskdepth.data.shards import write_shard

    torch.set_num_threads(1)
    clock = time.process_time
    t = {k: 0.0 for k in ("banks", "placement", "compose", "jpeg", "png_mask", "png_depth", "tar")}
    c0 = clock()
    bgs, cutouts, bg_rgb, bg_depth = make_render._banks(plan)
    t["banks"] = clock() - c0
    split, j = plan.locate(index)
    k, bg_id, cut_id, flip = plan.triples(split, j)
    c0 = clock()
    g = torch.Generator().manual_seed(seed_for(plan.cfg.seed, STREAM_SHARD, index))
    p = sample_placements(bgs, cutouts, torch.from_numpy(bg_id), torch.from_numpy(cut_id),
                          torch.from_numpy(flip.astype(bool)), g, plan.cfg.compose)
    t["placement"] = clock() - c0
    samples = []
    frames = make_render.render_samples(bgs, cutouts, p, plan.cfg.compose, bg_rgb, bg_depth)
    while True:
        c0 = clock()
        item = next(frames, None)
        t["compose"] += clock() - c0
        if item is None:
            break
        i, image, mask, depth = item
        c0 = clock()
        jpg = encode_jpeg(image, JPEG_QUALITY)
        c1 = clock()
        png = encode_png(mask)
        c2 = clock()
        dpng = encode_depth_png(depth, DEPTH_SCALE)
        c3 = clock()
        t["jpeg"] += c1 - c0
        t["png_mask"] += c2 - c1
        t["png_depth"] += c3 - c2
        samples.append((f"s{i:07d}", {"fg_bg.jpg": jpg, "mask.png": png, "depth.png": dpng, "json": b"{}"}))
    c0 = clock()
    write_shard(root / "profile.tar", samples)
    t["tar"] = clock() - c0
    n = len(samples)
    per = {k: round(v / n * 1e3, 4) for k, v in t.items() if k != "banks"}
    total = sum(per.values())
    return {"samples": n, "cpu_ms_per_sample": per, "cpu_ms_per_sample_total": round(total, 4),
            "samples_per_s_per_core": round(1e3 / total, 1), "banks_s": round(t["banks"], 3),
            "bytes_per_sample": round(sum(len(b) for _, s in samples for b in s.values()) / n)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (12 backgrounds, 96 px, 2 small shards)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shards", default="0:9",
                   help="global shard range of the seed preset (default 0:9: shard 0 warms up, 8,000 samples timed)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/data_make[-quick].json)")
    args = p.parse_args()

    from maskdepth.data.make import PRESETS, MakeConfig, ShardPlan, make_dataset
    from maskdepth.fileio import atomic_write_text

    if args.quick:
        cfg = MakeConfig(size=(96, 96), backgrounds=12, foregrounds=6, per_pair=2, shard_size=100)
        shards, preset_total = "0:2", None
    else:
        cfg = MakeConfig(shard_size=1000, **PRESETS["seed"])
        shards, preset_total = args.shards, 400_000

    with tempfile.TemporaryDirectory(prefix="maskdepth-bench-") as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        summary = make_dataset(root, cfg, shards="0:1", workers=args.workers,
                               progress=False)  # assets + metadata + the first shard (warms the banks' build)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        first, last = (int(x) for x in shards.split(":"))
        summary = make_dataset(root, cfg, shards=f"{max(first, 1)}:{last}", workers=args.workers, progress=False)
        shard_s = time.perf_counter() - t0
        n = summary["samples_written"]
        rate = n / shard_s
        meta = summary["metadata"]
        plan = ShardPlan(str(root), cfg, meta["counts"]["cutouts"],
                    {"train": tuple(i for i in range(meta["counts"]["backgrounds"])
                                    if i not in meta["split"]["test_backgrounds"]),
                     "test": tuple(meta["split"]["test_backgrounds"])}, digest="profile")
        profile = stage_profile(Path(tmp), plan, 0)

    result = {
        "benchmark": "data_make",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
        "note": "shared machine: figures are indicative",
        "config": {"size": list(cfg.size), "backgrounds": cfg.backgrounds, "foregrounds": cfg.foregrounds,
                   "per_pair": cfg.per_pair, "shard_size": cfg.shard_size, "workers": args.workers,
                   "shards": shards},
        "setup_s": round(setup_s, 2),
        "samples": n, "seconds": round(shard_s, 2), "samples_per_s": round(rate, 1),
        "stage_profile_one_process": profile,
    }
    if preset_total:
        # setup (assets, metadata and the first shard) is paid once per machine
        result["seed_preset_minutes_at_measured_rate"] = round((preset_total / rate + setup_s) / 60, 2)
        # what `workers` cores give when nothing else runs on them: the one-process CPU profile, scaled
        free_rate = args.workers * profile["samples_per_s_per_core"]
        result["samples_per_s_if_cores_free"] = round(free_rate, 1)
        result["seed_preset_minutes_if_cores_free"] = round((preset_total / free_rate + setup_s) / 60, 2)
        result["target"] = {"samples_per_s": 700, "minutes": 10}
    out = Path(args.out) if args.out else RESULTS / f"data_make{'-quick' if args.quick else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
