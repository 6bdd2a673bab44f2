"""How well and how fast align.py registers a nudged, re-lit bg capture onto the picture. Writes
benchmarks/results/registration.json.

    python benchmarks/registration.py                 # 96 procedural composites per size: 192x192 and 480x640
    python benchmarks/registration.py --quick         # tiny smoke run

Each composite's bg is moved the way realbench.py's `shifted` condition moves it (1-3 px, rotated by up to 0.5
degrees) and re-lit per channel (+-15%); the registration's error is measured where it matters, as the largest
displacement error over the frame's pixels, and its time per pair at batch 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from maskdepth import align
from maskdepth.data.capture import CaptureConfig
from maskdepth.data.generator import OnTheFlyGenerator
from maskdepth.realbench import ROTATION_DEG, SHIFT_PX, _move

RESULTS = Path(__file__).resolve().parent / "results"


def _frame_error(reg: align.Registration, k: int, truth: align.Registration) -> float:
    """Largest displacement error over the frame, in pixels: the two motions' difference at the corners."""
    diff = align.Registration(motion=reg.motion[k:k + 1] - truth.motion, gain=reg.gain[k:k + 1],
                              bias=reg.bias[k:k + 1], size=reg.size)
    return float(diff.shift_px()[0])


def run_size(h: int, w: int, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    errors, gain_errors, seconds = [], [], []
    gen = OnTheFlyGenerator.procedural(32, 32, (h, w), seed=seed, batch_size=min(n, 16),
                                       capture=CaptureConfig.off())
    done = 0
    while done < n:
        batch = next(gen)
        for bg_t, im_t in zip(batch["bg"], batch["image"]):
            if done == n:
                break
            bg = (bg_t.permute(1, 2, 0) * 255).round().byte().numpy()
            r, a = rng.uniform(*SHIFT_PX), rng.uniform(0, 2 * math.pi)
            dx, dy, ang = r * math.cos(a), r * math.sin(a), rng.uniform(-ROTATION_DEG, ROTATION_DEG)
            gains = 1 + rng.uniform(-0.15, 0.15, 3)
            moved = np.clip(_move(bg, (dx, dy), ang) * gains, 0, 255).astype(np.uint8)
            b = torch.from_numpy(moved).permute(2, 0, 1)[None].float() / 255
            t0 = time.perf_counter()
            reg = align.register(b, im_t[None])
            align.apply(b, reg, im_t[None])  # as predict applies it
            seconds.append(time.perf_counter() - t0)
            # realbench._move samples the bg at the shifted place rotated by -angle; the same motion, in this
            # module's terms
            th = math.radians(-ang)
            truth = align.Registration(motion=torch.tensor([[math.cos(th) - 1, math.sin(th), dx, dy]]),
                                       gain=torch.ones(1, 3), bias=torch.zeros(1, 3), size=(h, w))
            errors.append(_frame_error(reg, 0, truth))
            gain_errors.append(float((reg.gain[0] - torch.from_numpy(1 / gains).float()).abs().max()))
            done += 1
    e = np.array(errors)
    return {"size": [h, w], "pairs": n, "frame_error_px": {"median": round(float(np.median(e)), 3),
                                                           "p95": round(float(np.quantile(e, 0.95)), 3),
                                                           "max": round(float(e.max()), 3)},
            "within_0.5px": round(float((e <= 0.5).mean()), 3),
            "gain_error_median": round(float(np.median(gain_errors)), 4),
            "ms_per_pair_median": round(1000 * float(np.median(seconds[1:] or seconds)), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=96)
    p.add_argument("--sizes", nargs="+", default=["192x192", "480x640"], help="HxW")
    p.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 pairs at 64x80")
    p.add_argument("--out", type=Path, default=RESULTS / "registration.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ["64x80"] if args.quick else args.sizes
    rows = []
    for s in sizes:
        h, w = (int(v) for v in s.lower().split("x"))
        row = run_size(h, w, 8 if args.quick else args.pairs, args.seed)
        rows.append(row)
        fe = row["frame_error_px"]
        print(f"{h}x{w}: frame error median {fe['median']:.3f} px, p95 {fe['p95']:.3f}, max {fe['max']:.3f}; "
              f"within 0.5 px {row['within_0.5px']:.0%}; gain error {row['gain_error_median']:.4f}; "
              f"{row['ms_per_pair_median']:.1f} ms per pair", flush=True)
    report = {"benchmark": "registration", "date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "sizes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
