"""Loader throughput: samples/s decoded and augmented at 192x192, plus a per-stage profile (one core).

    .venv/bin/python benchmarks/loader.py [--data DIR] [--quick] [--workers 2] [--size 192]

Without --data it writes its own synthetic dataset (smooth scenes with texture, JPEG q95, soft masks, 16-bit
depth) into a temporary folder. Results go to benchmarks/results/loader.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maskdepth.codecs import (
    decode_depth_png,
    decode_gray,
    decode_rgb,
    encode_depth_png,
    encode_jpeg,
    encode_png,
)
from maskdepth.data.augment import AugmentConfig, augment_batch, resize_batch
from maskdepth.data.capture import CaptureConfig, apply_capture
from maskdepth.data.format import FORMAT, FORMAT_VERSION, background_files, shard_name
from maskdepth.data.loader import make_loader
from maskdepth.data.shards import iter_shard, write_shard

RESULTS = Path(__file__).parent / "results" / "loader.json"


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0,1], bilinear from a coarse grid."""
    g = torch.from_numpy(rng.random((1, 3, cells, cells), dtype=np.float32))
    return torch.nn.functional.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1) \
        .permute(1, 2, 0).numpy()


def synthetic_dataset(root: Path, n: int, size: int, shard_size: int, n_bg: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    floor_depth = (8000 - 6000 * yy / h).astype(np.float32)  # mm, nearer at the bottom like a floor
    bgs = []
    for b in range(n_bg):
        rgb = smooth_field(rng, h, w, 6) * 0.8 + rng.random((h, w, 3), dtype=np.float32) * 0.2
        rgb = (rgb * 255).astype(np.uint8)
        paths = background_files(root, b)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        paths[0].write_bytes(encode_png(rgb))
        paths[1].write_bytes(encode_depth_png(floor_depth, 1.0))
        bgs.append(rgb)
    names, counts = [], []
    for s in range(0, n, shard_size):
        samples = []
        for i in range(s, min(n, s + shard_size)):
            b = i % n_bg
            cy, cx, ry, rx = rng.uniform(0.3, 0.8) * h, rng.uniform(0.2, 0.8) * w, h * 0.2, w * 0.1
            alpha = np.clip(1.5 - np.hypot((yy - cy) / ry, (xx - cx) / rx) * 1.5, 0, 1)
            tex = smooth_field(rng, h, w, 12)
            image = (bgs[b] * (1 - alpha[..., None]) + tex * 255 * alpha[..., None]).astype(np.uint8)
            depth = np.where(alpha >= 0.5, floor_depth[min(h - 1, int(cy + ry)), 0], floor_depth)
            samples.append((f"{i:07d}", {"fg_bg.jpg": encode_jpeg(image, 95),
                                         "mask.png": encode_png((alpha * 255).astype(np.uint8)),
                                         "depth.png": encode_depth_png(depth, 1.0),
                                         "json": json.dumps({"bg": b}).encode()}))
        names.append(shard_name("train", len(names)))
        counts.append(write_shard(root / "shards" / names[-1], samples))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": "benchmark", "size": [h, w],
            "depth": {"unit": "metres", "scale": 0.001, "max": 9.0}, "shards": {"train": names, "test": []},
            "shard_counts": {"train": counts, "test": []}, "counts": {"train": n, "test": 0, "backgrounds": n_bg}}
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def loader_rate(data: Path, size: int, batch: int, workers: int, **kw) -> dict:
    """samples/s over one epoch, timed from the first batch (worker start-up excluded); the main process reads
    every tensor, as a consumer would. Also the CPU time per sample of the workers and of the main process (the
    whole epoch), which says what two free cores would do when the machine is shared."""
    c0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    loader = make_loader(data, "train", batch, size, workers=workers, **kw)
    it = iter(loader)
    n = next(it)["image"].shape[0]
    t0, timed = time.perf_counter(), 0
    for b in it:
        timed += b["image"].shape[0]
        for v in b.values():
            v.sum()
    dt = time.perf_counter() - t0
    del it, loader
    c1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    n += timed
    worker = (c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime) / n * 1e3 if workers else 0.0
    main = (s1.ru_utime - s0.ru_utime + s1.ru_stime - s0.ru_stime) / n * 1e3
    return {"samples": timed, "seconds": round(dt, 3), "samples_per_s": round(timed / dt, 1),
            "worker_cpu_ms_per_sample": round(worker, 3), "main_cpu_ms_per_sample": round(main, 3),
            "samples_per_s_on_2_free_cores": round(2e3 / max(worker + main, 1e-9), 1)}


def profile(data: Path, size: int, batch: int, reps: int) -> dict:
    """Per-sample milliseconds of each stage on one thread (CPU time, so other load on the machine counts less)."""
    torch.set_num_threads(1)
    shard = next((data / "shards").glob("*.tar"))
    samples = [s for _, (_, s) in zip(range(batch), iter_shard(shard))]

    def ms(f) -> float:
        f()
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            f()
            best = min(best, time.process_time() - t)
        return round(best / len(samples) * 1e3, 4)

    out = {"decode_jpeg": ms(lambda: [decode_rgb(s["fg_bg.jpg"]) for s in samples]),
           "decode_mask_png": ms(lambda: [decode_gray(s["mask.png"]) for s in samples]),
           "decode_depth_png": ms(lambda: [decode_depth_png(s["depth.png"]) for s in samples])}
    imgs = np.stack([decode_rgb(s["fg_bg.jpg"]) for s in samples])
    b = {"image": torch.from_numpy(imgs).permute(0, 3, 1, 2), "bg": torch.from_numpy(imgs.copy()).permute(0, 3, 1, 2),
         "mask": torch.from_numpy(np.stack([decode_gray(s["mask.png"]) for s in samples]))[:, None],
         "depth": torch.from_numpy(np.stack([decode_depth_png(s["depth.png"]) for s in samples])
                                   .astype(np.float32))[:, None] * 0.001}
    g = torch.Generator().manual_seed(0)
    out["augment"] = ms(lambda: augment_batch(b, AugmentConfig(), size, g))
    out["augment_no_light"] = ms(lambda: augment_batch(b, AugmentConfig(photometric=0.0), size, g))
    out["resize_only"] = ms(lambda: resize_batch(b, size))
    bgf = resize_batch(b, size)["bg"]
    out["capture"] = ms(lambda: apply_capture(bgf, CaptureConfig(), g))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset folder (default: a synthetic one)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4096, help="synthetic dataset size")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    n = 256 if args.quick else args.samples
    batch = 16 if args.quick else args.batch
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthetic_dataset(Path(tmp) / "data", n, args.size, shard_size=max(64, n // 8))
        runs = {
            "train_augment_capture": loader_rate(data, args.size, batch, args.workers, train=True,
                                                 augment=AugmentConfig(), capture=CaptureConfig()),
            "train_augment": loader_rate(data, args.size, batch, args.workers, train=True,
                                         augment=AugmentConfig()),
            "plain": loader_rate(data, args.size, batch, args.workers, train=False),
        }
        stages = profile(data, args.size, batch, reps=2 if args.quick else 5)
    result = {"benchmark": "loader", "date": datetime.date.today().isoformat(),
              "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "torch": torch.__version__,
                          "load_average_1min": round(os.getloadavg()[0], 2)},
              "quick": args.quick, "size": args.size, "batch": batch, "workers": args.workers,
              "data": str(args.data) if args.data else f"synthetic, {n} samples",
              "loader": runs, "stage_ms_per_sample_one_core": stages,
              "target_samples_per_s": 1500}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
