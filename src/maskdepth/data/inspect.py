"""`maskdepth data show` (a picture grid of samples) and `maskdepth data stats` (what is in a dataset)."""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

import numpy as np
import torch

from maskdepth.codecs import decode_depth_png, decode_gray, decode_rgb
from maskdepth.data.capture import CaptureConfig, apply_camera, apply_capture
from maskdepth.data.format import SPLITS, DatasetDir
from maskdepth.data.shards import iter_counted_shard
from maskdepth.errors import UserError
from maskdepth.progress import track
from maskdepth.viz import colorize_depth, make_grid

COLUMNS = ("bg", "fg_bg", "mask", "depth")


def pick_samples(ds: DatasetDir, split: str, n: int, seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    """Up to n samples of `split` chosen from `seed`: all of them if there are no more than n, else n at random
    from randomly chosen shards holding at least n together, so only those shards are read (shards are mixes
    of the whole dataset, so this is a fair sample at a fraction of the reading)."""
    counts = ds.shard_counts(split)
    if sum(counts) == 0:
        raise UserError(f"{ds.root}: split '{split}' has no samples; try --split "
                        f"{'test' if split == 'train' else 'train'}")
    rng = random.Random(seed)
    order = [s for s in range(len(counts)) if counts[s]]
    rng.shuffle(order)
    take, have = [], 0
    for s in order:
        if have >= n:
            break
        take.append(s)
        have += counts[s]
    pool = [(s, i) for s in sorted(take) for i in range(counts[s])]
    chosen = set(pool) if len(pool) <= n else set(rng.sample(pool, n))
    paths = ds.shards(split)
    picked = []
    for s in sorted(take):
        for i, sample in enumerate(iter_counted_shard(paths[s], counts[s])):  # a short shard is reported
            if (s, i) in chosen:
                picked.append(sample)
    return picked


def decode_sample(ds: DatasetDir, sample: dict[str, bytes]) -> dict[str, np.ndarray]:
    """bg (H,W,3) uint8, fg_bg (H,W,3) uint8, mask (H,W) uint8, depth (H,W) float32 in the dataset's unit."""
    try:
        bg_id = int(json.loads(sample["json"])["bg"])
        return {"bg": ds.background(bg_id)[0], "fg_bg": decode_rgb(sample["fg_bg.jpg"]),
                "mask": decode_gray(sample["mask.png"]),
                "depth": decode_depth_png(sample["depth.png"]).astype(np.float32) * ds.depth_scale}
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:
        raise UserError(f"{ds.root}: a sample is damaged ({e}); rebuild the dataset") from None


def show_grid(data_dir: str | os.PathLike, split: str = "train", n: int = 16, seed: int = 0,
              tile: int = 160, capture: CaptureConfig | None = None) -> np.ndarray:
    """(H,W,3) uint8 grid of n samples as quartets bg | fg_bg | mask | coloured depth, about sqrt(n)/2 quartets
    per row, each tile at most `tile` pixels on its longer side; depth coloured on one 0..depth_max scale.
    With `capture`, bg and fg_bg are shown as training sees them (data/capture.py: one camera's response on both,
    then bg re-captured), seeded by `seed`."""
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    ds = DatasetDir(data_dir)
    h, w = ds.size
    f = min(1.0, tile / max(h, w))
    tile_hw = (max(1, round(h * f)), max(1, round(w * f)))
    quartets = []
    for _, sample in pick_samples(ds, split, n, seed):
        s = decode_sample(ds, sample)
        quartets.append([s["bg"], s["fg_bg"], s["mask"], colorize_depth(s["depth"], 0.0, ds.depth_max)])
    if capture is not None and quartets:
        def tensor(k: int) -> torch.Tensor:
            return torch.from_numpy(np.stack([q[k] for q in quartets])).permute(0, 3, 1, 2).float() / 255

        def pictures(x: torch.Tensor) -> np.ndarray:
            return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

        gen = torch.Generator().manual_seed(seed)
        image, bg = apply_camera(tensor(1), tensor(0), capture, gen)
        for q, b, im in zip(quartets, pictures(apply_capture(bg, capture, gen)), pictures(image)):
            q[0], q[1] = b, im
    per_row = quartets_per_row(n)
    rows = [sum(quartets[i:i + per_row], []) for i in range(0, len(quartets), per_row)]
    return make_grid(rows, labels=list(COLUMNS) * per_row, tile=tile_hw)


def quartets_per_row(n: int) -> int:
    """Quartets side by side so that n of them make a roughly square grid."""
    return max(1, round(math.sqrt(n) / 2))


class _Moments:
    """Per-channel sums in float64 -> mean and std over all pixels seen."""

    def __init__(self, channels: int):
        self.n, self.s, self.ss = 0, np.zeros(channels), np.zeros(channels)

    def add(self, x: np.ndarray) -> None:
        x = x.reshape(-1, self.s.size).astype(np.float64)
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.ss += (x * x).sum(0)

    def result(self, scale: float = 1.0) -> dict[str, list[float]]:
        mean = self.s / max(self.n, 1)
        var = np.maximum(self.ss / max(self.n, 1) - mean**2, 0)
        return {"mean": [round(float(v) * scale, 6) for v in mean], "std": [round(float(v) * scale, 6)
                                                                           for v in np.sqrt(var)]}


def dataset_stats(data_dir: str | os.PathLike, split: str = "train", max_samples: int = 2000, seed: int = 0,
                  progress: bool = True) -> dict[str, Any]:
    """Counts from the metadata, and over up to `max_samples` samples of `split`: per-channel mean/std of fg_bg
    and of the samples' bg (values in [0,1]), depth range/mean over known pixels and the known fraction, and
    mask coverage (mean fraction per sample, its min and max, share of samples with an empty mask)."""
    if max_samples < 1:
        raise UserError(f"--max-samples must be at least 1 (got {max_samples})")
    ds = DatasetDir(data_dir)
    samples = pick_samples(ds, split, max_samples, seed)
    fg, bg = _Moments(3), _Moments(3)
    d_min, d_max, d_sum, d_known, pixels = math.inf, 0.0, 0.0, 0, 0
    coverage = []
    for _, sample in track(samples, f"stats {split}", unit="sample", enabled=progress):
        s = decode_sample(ds, sample)
        fg.add(s["fg_bg"])
        bg.add(s["bg"])
        known = s["depth"][s["depth"] > 0]
        if known.size:
            d_min, d_max = min(d_min, float(known.min())), max(d_max, float(known.max()))
            d_sum += float(known.sum(dtype=np.float64))
        d_known += known.size
        pixels += s["depth"].size
        coverage.append(float(s["mask"].mean(dtype=np.float64)) / 255.0)
    cov = np.array(coverage)
    return {
        "dataset": str(ds.root), "split": split, "size": list(ds.size),
        "counts": {**{k: int(v) for k, v in ds.meta.get("counts", {}).items()},
                   **{sp: sum(ds.shard_counts(sp)) for sp in SPLITS}},
        "sampled": len(samples),
        "fg_bg": fg.result(1 / 255), "bg": bg.result(1 / 255),
        "depth": {"unit": ds.depth_unit, "min": round(d_min, 6) if d_known else None,
                  "max": round(d_max, 6) if d_known else None,
                  "mean": round(d_sum / d_known, 6) if d_known else None,
                  "known_fraction": round(d_known / max(pixels, 1), 6), "dataset_max": ds.depth_max},
        "mask": {"coverage_mean": round(float(cov.mean()), 6), "coverage_min": round(float(cov.min()), 6),
                 "coverage_max": round(float(cov.max()), 6), "empty_fraction": round(float((cov == 0).mean()), 6)},
    }


def format_stats(st: dict[str, Any]) -> str:
    """The stats as a short table for the terminal."""
    def rgb(v: list[float]) -> str:
        return " ".join(f"{x:.3f}" for x in v)

    c, d, m = st["counts"], st["depth"], st["mask"]
    counts = ", ".join(f"{k} {v}" for k, v in c.items())
    known = "no known depth" if d["min"] is None else \
        f"{d['min']:.4g} .. {d['max']:.4g}, mean {d['mean']:.4g} ({d['known_fraction']:.1%} of pixels known)"
    return "\n".join([
        f"dataset    {st['dataset']}  ({st['size'][1]}x{st['size'][0]})",
        f"counts     {counts}",
        f"sampled    {st['sampled']} samples of split '{st['split']}'",
        f"fg_bg      mean {rgb(st['fg_bg']['mean'])}  std {rgb(st['fg_bg']['std'])}",
        f"bg         mean {rgb(st['bg']['mean'])}  std {rgb(st['bg']['std'])}",
        f"depth      {known} [{d['unit']}, dataset max {d['dataset_max']:.4g}]",
        f"mask       coverage mean {m['coverage_mean']:.1%}, min {m['coverage_min']:.1%}, "
        f"max {m['coverage_max']:.1%}, empty in {m['empty_fraction']:.1%} of samples",
    ])
