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
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "maskdepth" / "weights"
# The procedural test set of the card: rooms and cutouts the weights never saw (another seed), all held out.
# "compose": the ComposeConfig fields that differ from today's defaults, so the set stays the one the card was
# measured on when the composition gains effects (cast shadows, reflections, camouflage, shading came later)
CARD_EVAL = {"size": 96, "backgrounds": 12, "foregrounds": 10, "per_pair": 2, "seed": 20261123,
             "test_fraction": 0.5,
             "compose": {"cast_prob": 0.0, "reflection_prob": 0.0, "camo_prob": 0.0, "shade_prob": 0.0}}


def make_card_dataset(out: Path) -> Path:
    from maskdepth.data.compose import ComposeConfig
    from maskdepth.data.make import MakeConfig, make_dataset

    c = CARD_EVAL
    make_dataset(out, MakeConfig(size=(c["size"], c["size"]), backgrounds=c["backgrounds"],
                                 foregrounds=c["foregrounds"], per_pair=c["per_pair"], seed=c["seed"],
                                 test_fraction=c["test_fraction"], shard_size=500,
                                 compose=ComposeConfig(**c.get("compose", {}))), workers=2, progress=False)
    return out


def _training_data(run: Path) -> dict:
    """What the run trained on: the dataset's own record of the command that made it."""
    data_dir = tomllib.loads((run / "config.toml").read_text())["data"]["dir"]
    meta = json.loads((ROOT / data_dir / "metadata.json").read_text())
    return {"kind": "procedural rooms and cutouts (maskdepth data make)",
            "command": meta["command"].replace(" OUT ", f" {data_dir} ", 1), "counts": meta["counts"]}


def _training_summary(run: Path, run_info: dict) -> dict:
    """Steps, batch, sizes and wall-clock time of the run, read from its metrics.jsonl and run.json."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    sizes = list(dict.fromkeys(r["size"] for r in train))
    out = {"steps": max((r["step"] for r in records), default=0), "sizes": sizes}
    if (run / "config.toml").is_file():
        out["batch_size"] = tomllib.loads((run / "config.toml").read_text())["train"]["batch_size"]
    if run_info.get("started") and (run / "last.safetensors").is_file():
        started = dt.datetime.fromisoformat(run_info["started"])
        ended = dt.datetime.fromtimestamp((run / "last.safetensors").stat().st_mtime, dt.UTC)
        out["wall_clock_min"] = round((ended - started).total_seconds() / 60, 1)
    return out


def main() -> int:
    from maskdepth import __version__
    from maskdepth.checkpoint import load_model_from_checkpoint, read_checkpoint, save_checkpoint
    from maskdepth.evaluate import evaluate_checkpoint
    from maskdepth.fileio import atomic_write_text

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
                                        size=CARD_EVAL["size"], workers=2, progress=False, aligned=True)
    run_info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    card = {
        "model": header["model"],
        "model_kwargs": header["model_kwargs"],
        "params": sum(p.numel() for p in model.parameters()),
        "file": "default.safetensors",
        "depth": header.get("depth"),
        "train_size": header.get("train_size"),
        "data": _training_data(run),
        "recipe": {"config": "configs/default-weights.toml",
                   "command": "maskdepth train --config configs/default-weights.toml --out runs/default-weights",
                   **_training_summary(run, run_info)},
        "evaluation": {"what": "freshly generated procedural test set (unseen rooms and cutouts)",
                       "dataset": CARD_EVAL, "samples": record["samples"],
                       "metrics": {k: round(v, 4) for k, v in record["metrics"].items()}},
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU ({platform.system()})",
        "versions": {"maskdepth": __version__, **run_info.get("versions", {})},
    }
    atomic_write_text(WEIGHTS / "default.json", json.dumps(card, indent=2) + "\n")
    m = card["evaluation"]["metrics"]
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and default.json: mask IoU "
          f"{m['mask_iou']:.3f}, depth delta1 {m['depth_delta1']:.3f} (aligned {m['aligned_depth_delta1']:.3f}), "
          f"AbsRel {m['depth_absrel']:.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    raise SystemExit(main())
