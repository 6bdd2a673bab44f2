"""Resolution robustness on unseen procedural rooms: one checkpoint evaluated on the same fresh test rooms made at
several sizes (mask IoU whole set and per image, depth δ<1.25 raw and after per-image scale-and-shift alignment).
Writes benchmarks/results/procedural_sizes.json.

    python benchmarks/procedural_sizes.py                          # the shipped weights at 96 and 192
    python benchmarks/procedural_sizes.py --ckpt RUN/last.safetensors --sizes 96 128 192

The rooms and cutouts are those of the default weights' card (scripts/package_default_weights.py CARD_EVAL: a
seed no training run uses), rendered at each size; the model runs at the size of the data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("mask_iou", "mask_iou_per_image", "mask_boundary_f", "depth_delta1", "depth_absrel", "aligned_depth_delta1")


def main() -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from package_default_weights import CARD_EVAL, make_card_dataset

    from maskdepth.checkpoint import DEFAULT_WEIGHTS
    from maskdepth.evaluate import evaluate_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped weights)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[96, 192])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "procedural_sizes.json")
    args = ap.parse_args()
    ckpt = args.ckpt or str(ROOT / "src" / "maskdepth" / DEFAULT_WEIGHTS)
    c = CARD_EVAL
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data = Path(tmp) / f"rooms-{size}"
            make_card_dataset(data, size)
            record, _ = evaluate_checkpoint(ckpt, data, "test", size=size, workers=1, progress=False, aligned=True)
            rows[size] = {k: round(record["metrics"][k], 4) for k in KEYS}
            print(f"{size}x{size}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[size].items()), flush=True)
    report = {"benchmark": "procedural_sizes", "date": datetime.date.today().isoformat(), "ckpt": ckpt,
              "dataset": {k: v for k, v in c.items() if k != "size"}, "sizes": rows}  # rendered at each size
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
