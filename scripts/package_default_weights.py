"""Put a trained checkpoint into the package as the default weights, with its card.

    python scripts/package_default_weights.py runs/default-weights/last.safetensors

The card (src/maskdepth/weights/default.json) records the data and recipe the weights were trained with, their
metrics on a freshly generated procedural test set (CARD_EVAL below: tests/test_default_weights.py regenerates
it and checks the metrics), the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "maskdepth" / "weights"
# The procedural test set of the card: rooms and cutouts the weights never saw (another seed), all held out.
CARD_EVAL = {"size": 96, "backgrounds": 12, "foregrounds": 10, "per_pair": 2, "seed": 20261123,
             "test_fraction": 0.5}


def make_card_dataset(out: Path) -> Path:
    from maskdepth.data.make import MakeConfig, make_dataset

    c = CARD_EVAL
    make_dataset(out, MakeConfig(size=(c["size"], c["size"]), backgrounds=c["backgrounds"],
                                 foregrounds=c["foregrounds"], per_pair=c["per_pair"], seed=c["seed"],
                                 test_fraction=c["test_fraction"], shard_size=500), workers=2, progress=False)
    return out


def main() -> int:
    from maskdepth import __version__
    from maskdepth.checkpoint import load_model_from_checkpoint, read_checkpoint, save_checkpoint
    from maskdepth.evaluate import evaluate_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--run", help="the run folder (default: the checkpoint's folder)")
    args = ap.parse_args()
    run = Path(args.run or Path(args.ckpt).parent)
    _, header = read_checkpoint(args.ckpt)
    model, _ = load_model_from_checkpoint(args.ckpt)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    weights = WEIGHTS / "default.safetensors"
    save_checkpoint(weights, model, {k: v for k, v in header.items() if k not in ("model", "model_kwargs",
                                                                                   "format_version")})
    with tempfile.TemporaryDirectory() as tmp:
        record, _ = evaluate_checkpoint(weights, make_card_dataset(Path(tmp) / "card"), "test",
                                        size=CARD_EVAL["size"], workers=2, progress=False)
    run_info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    card = {
        "model": header["model"],
        "model_kwargs": header["model_kwargs"],
        "params": sum(p.numel() for p in model.parameters()),
        "file": "default.safetensors",
        "depth": header.get("depth"),
        "train_size": header.get("train_size"),
        "data": {"kind": "procedural rooms and cutouts (maskdepth data make)",
                 "command": "maskdepth data make data/default-train --size 128 --backgrounds 100 "
                            "--foregrounds 50 --per-pair 4 --seed 1"},
        "recipe": {"config": "configs/default-weights.toml",
                   "commands": [
                       "maskdepth train --config configs/default-weights.toml --out runs/default-weights",
                       "maskdepth train --config configs/default-weights.toml --out runs/default-weights-2 "
                       "--init runs/default-weights/last.safetensors --set train.resize=[] --set train.epochs=3 "
                       "--set schedule.name=\"cosine\" --set schedule.warmup_steps=50 --lr 1.5e-3"],
                   "steps": "1600 (64x64 then 96x96, batch 24) + 1200 (96x96, batch 24)",
                   "wall_clock": "about 45 + 20 minutes on 2 CPU cores"},
        "evaluation": {"what": "freshly generated procedural test set (unseen rooms and cutouts)",
                       "dataset": CARD_EVAL, "samples": record["samples"],
                       "metrics": {k: round(v, 4) for k, v in record["metrics"].items()}},
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU ({platform.system()})",
        "versions": {"maskdepth": __version__, **run_info.get("versions", {})},
    }
    (WEIGHTS / "default.json").write_text(json.dumps(card, indent=2) + "\n")
    m = card["evaluation"]["metrics"]
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and default.json: mask IoU "
          f"{m['mask_iou']:.3f}, depth delta1 {m['depth_delta1']:.3f}, AbsRel {m['depth_absrel']:.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    raise SystemExit(main())
