"""Depth teacher speed: throughput of a tiny teacher network (ONNX Runtime and TorchScript, one thread as
`data make` runs it, and all threads), and the end-to-end `maskdepth data make` time at 192x192 for the same
pictures made four ways: procedural rooms, photos without depth, photos with the teacher per background, photos
with the teacher per composite (plus a rerun of that with a warm cache).
Writes benchmarks/results/teacher.json (teacher-quick.json with --quick).

    python benchmarks/teacher.py            # 10 photos x 10 cutouts x 2 flips x 5 = 1,000 samples per make
    python benchmarks/teacher.py --quick    # tiny smoke run

Expectation: per-background costs little more than a make without a teacher (the teacher runs once per photo);
per-composite adds one teacher run per sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def tiny_teacher(folder: Path) -> dict[str, Path]:
    """A small depth network (three 3x3 convolutions modulating a floor-like disparity), as ONNX and TorchScript."""
    import torch
    from torch import nn

    class TinyDepth(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                     nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1))

        def forward(self, x):
            rows = torch.cumsum(torch.ones_like(x[:, :1]), dim=2)
            return rows * (1.0 + 0.1 * torch.tanh(self.net(x)))

    model = TinyDepth().eval()
    x = torch.rand(1, 3, 64, 64)
    paths = {"onnx": folder / "tiny.onnx", "torchscript": folder / "tiny.pt"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(paths["onnx"]), input_names=["image"], output_names=["depth"],
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "depth": {0: "n", 2: "h", 3: "w"}},
                          dynamo=False)
        torch.jit.save(torch.jit.trace(model, x), str(paths["torchscript"]))
    for p in paths.values():
        p.with_suffix(".json").write_text(json.dumps({"output": "disparity", "unit": "relative"}))
    return paths


def throughput(path: Path, n: int, size: int, threads: int | None) -> dict:
    """Images/s of DepthTeacher.predict on n random pictures (no cache), after one warm-up batch."""
    import numpy as np

    from maskdepth.data.teacher import DepthTeacher

    teacher = DepthTeacher.from_path(path, threads=threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    teacher.predict(images[:teacher.batch_size])
    t0 = time.perf_counter()
    teacher.predict(images)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 1),
            "threads": threads or "all", "batch_size": teacher.batch_size}


def user_pictures(folder: Path, n_photos: int, n_cutouts: int) -> tuple[Path, Path]:
    """Procedural rooms saved as JPEG photos (larger than the dataset size) and cutouts as RGBA PNGs."""
    from PIL import Image

    from maskdepth.data.banks import procedural_background, procedural_foreground

    photos, cutouts = folder / "photos", folder / "cutouts"
    photos.mkdir()
    cutouts.mkdir()
    for i in range(n_photos):
        Image.fromarray(procedural_background(11, i, (288, 384)).image).save(photos / f"room{i:03d}.jpg", quality=92)
    for i in range(n_cutouts):
        Image.fromarray(procedural_foreground(11, i).rgba, "RGBA").save(cutouts / f"thing{i:03d}.png")
    return photos, cutouts


def timed_make(out: Path, cache: Path, workers: int, **cfg) -> dict:
    from maskdepth.data.make import MakeConfig, make_dataset

    t0 = time.perf_counter()
    summary = make_dataset(out, MakeConfig(**cfg), workers=workers, progress=False, teacher_cache=cache)
    dt = time.perf_counter() - t0
    n = summary["samples_written"]
    return {"samples": n, "seconds": round(dt, 2), "samples_per_s": round(n / dt, 1),
            "teacher_computed": summary["teacher_computed"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (3 photos, 2 cutouts, 96 px)")
    p.add_argument("--workers", type=int, default=2, help="data make processes (default 2)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/teacher[-quick].json)")
    args = p.parse_args()

    import onnxruntime
    import torch

    from maskdepth.fileio import atomic_write_text

    size = 96 if args.quick else 192
    n_photos, n_cutouts, per_pair = (3, 2, 2) if args.quick else (10, 10, 5)
    n_images = 16 if args.quick else 128
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
        "note": "shared machine: figures are indicative",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "size": size, "quick": args.quick, "workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = tiny_teacher(tmp)
        result["teacher_throughput"] = {
            f"{kind}-{'1thread' if threads else 'all-threads'}": throughput(path, n_images, size, threads)
            for kind, path in models.items() for threads in (1, None)}
        photos, cutouts = user_pictures(tmp, n_photos, n_cutouts)
        common = {"size": (size, size), "per_pair": per_pair, "shard_size": 250, "test_fraction": 0.1}
        users = {**common, "bg_dir": str(photos), "fg_dir": str(cutouts)}
        teacher = {"teacher": str(models["onnx"])}
        runs = {
            "procedural": {**common, "backgrounds": n_photos, "foregrounds": n_cutouts},
            "photos, no depth": users,
            "photos, teacher per-background": {**users, **teacher, "teacher_mode": "per-background"},
            "photos, teacher per-composite": {**users, **teacher, "teacher_mode": "per-composite"},
        }
        result["make"] = {}
        for name, cfg in runs.items():
            slug = name.replace(" ", "").replace(",", "-")
            result["make"][name] = timed_make(tmp / slug, tmp / f"cache-{slug}", args.workers, **cfg)
            print(name, result["make"][name], flush=True)
        # the same per-composite dataset again into a new folder, its teacher results cached
        result["make"]["photos, teacher per-composite, cached"] = timed_make(
            tmp / "again", tmp / "cache-photos-teacherper-composite", args.workers,
            **runs["photos, teacher per-composite"])
    base = result["make"]["photos, no depth"]["seconds"]
    result["overhead_vs_no_depth"] = {k: round(v["seconds"] / base, 2) for k, v in result["make"].items()}
    out = Path(args.out) if args.out else RESULTS / f"teacher{'-quick' if args.quick else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
