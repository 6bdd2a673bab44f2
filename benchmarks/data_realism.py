"""What the capture-realism effects cost on a CPU: CPU ms per sample, one thread, the best of --repeats.

    python benchmarks/data_realism.py            # 192x192, 10 rooms, 20 cutouts, 512 placements, batches of 64
    python benchmarks/data_realism.py --quick    # tiny smoke run

Rows: `data make`'s windowed compose (make_render.render_samples) and a generator batch without and with capture, at the
defaults; then, where this version has them, the same with each compose effect off in turn (cast shadows,
reflections, camouflage, shading) and all off, and apply_capture / apply_camera alone. CPU time of one thread is
steadier than wall time on a shared machine. Writes benchmarks/results/data_realism[-quick].json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
EFFECTS = {"cast_prob": "cast shadows", "reflection_prob": "reflections", "camo_prob": "camouflage",
           "shade_prob": "shading"}


def best_ms(fn, samples: int, repeats: int) -> float:
    """Fewest CPU milliseconds per sample of `fn` over `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return round(best / samples * 1e3, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64 px, 64 placements, 2 repeats)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/data_realism[-quick].json)")
    args = p.parse_args()

    import torch

    from maskdepth.data.banks import BackgroundBank, CutoutBank, procedural_background, procedural_foreground
    from maskdepth.data.capture import CaptureConfig, apply_capture
    from maskdepth.data.compose import ComposeConfig, sample_placements
    from maskdepth.data.generator import OnTheFlyGenerator
    from maskdepth.data.make_render import render_samples
    from maskdepth.fileio import atomic_write_text

    torch.set_num_threads(1)
    size, n_bg, n_cut, n, batch = (64, 3, 4, 64, 16) if args.quick else (192, 10, 20, 512, 64)
    repeats = 2 if args.quick else args.repeats
    bgs = BackgroundBank.from_backgrounds([procedural_background(0, i, (size, size)) for i in range(n_bg)])
    cutouts = CutoutBank.from_cutouts([procedural_foreground(0, i) for i in range(n_cut)])
    rgb, depth = bgs.image.permute(0, 2, 3, 1).contiguous().numpy(), bgs.depth[:, 0].numpy()

    def make_compose(cfg: ComposeConfig) -> float:
        g = torch.Generator().manual_seed(0)
        pl = sample_placements(bgs, cutouts, torch.randint(n_bg, (n,), generator=g),
                               torch.randint(n_cut, (n,), generator=g), torch.rand(n, generator=g) < 0.5, g, cfg)
        return best_ms(lambda: sum(1 for _ in render_samples(bgs, cutouts, pl, cfg, rgb, depth)), n, repeats)

    def generator(cfg: ComposeConfig, capture) -> float:
        gen = OnTheFlyGenerator(bgs, cutouts, batch, 0, compose=cfg, capture=capture)
        next(gen)
        return best_ms(lambda: [next(gen) for _ in range(4)], 4 * batch, repeats)

    default = ComposeConfig()
    rows = {"make_compose": make_compose(default), "generator_no_capture": generator(default, None),
            "generator_capture": generator(default, CaptureConfig())}
    fields = {f.name for f in dataclasses.fields(ComposeConfig)}
    if set(EFFECTS) <= fields:
        for name, what in EFFECTS.items():
            rows[f"make_compose_without_{what.replace(' ', '_')}"] = make_compose(
                dataclasses.replace(default, **{name: 0.0}))
        rows["make_compose_effects_off"] = make_compose(dataclasses.replace(default, **dict.fromkeys(EFFECTS, 0.0)))
    x = torch.rand(batch, 3, size, size)
    g = torch.Generator().manual_seed(0)
    rows["apply_capture"] = best_ms(lambda: apply_capture(x, CaptureConfig(), g), batch, repeats)
    try:
        from maskdepth.data.capture import apply_camera
    except ImportError:
        pass
    else:
        rows["apply_camera"] = best_ms(lambda: apply_camera(x, x, CaptureConfig(), g), batch, repeats)

    from maskdepth import __version__

    result = {"benchmark": "data_realism", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "version": __version__,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "note": "CPU ms per sample, one thread, best of the repeats",
              "setting": {"size": size, "backgrounds": n_bg, "cutouts": n_cut, "placements": n, "batch": batch,
                          "repeats": repeats},
              "cpu_ms_per_sample": rows}
    out = Path(args.out) if args.out else RESULTS / f"data_realism{'-quick' if args.quick else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
