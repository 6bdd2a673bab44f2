"""Resolution robustness on unseen procedural rooms: one checkpoint evaluated on the same fresh test rooms made at
several sizes (mask IoU whole set and per image, depth δ<1.25 raw and after per-image scale-and-shift alignment).
The same masks are scored again through `maskdepth.load_model().predict` with its default settings (`predict_*`:
the bg registered first, as every user's pair is), so a difference between the two is the prediction path's. For
weights that predict at their input's size (the shipped ones) that is the same working size; others run at their
training size there.
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


def predicted_masks(ckpt: str, data: Path) -> dict[str, float]:
    """predict_mask_iou, predict_mask_iou_per_image: the test split's masks through load_model().predict."""
    import maskdepth
    from maskdepth.data.loader import make_loader
    from maskdepth.realbench import MaskScore
    from maskdepth.viz import to_uint8

    predictor = maskdepth.load_model(ckpt)
    score = MaskScore()
    for batch in make_loader(data, "test", 16, None, train=False, workers=0):
        bgs, images = ([to_uint8(x) for x in batch[k]] for k in ("bg", "image"))
        for pred, mask in zip(predictor.predict_arrays(bgs, images, layers=False), batch["mask"][:, 0].numpy()):
            score.add(pred.mask_prob, mask)
    out = score.result()
    return {"predict_mask_iou": out["mask_iou"], "predict_mask_iou_per_image": out["mask_iou_per_image"]}


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
            rows[size].update(predicted_masks(ckpt, data))
            print(f"{size}x{size}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[size].items()), flush=True)
    report = {"benchmark": "procedural_sizes", "date": datetime.date.today().isoformat(), "ckpt": ckpt,
              "dataset": {k: v for k, v in c.items() if k != "size"}, "sizes": rows}  # rendered at each size
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
