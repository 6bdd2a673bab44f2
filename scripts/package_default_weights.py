"""Put a trained checkpoint into the package as the default weights, with its card.

    python scripts/package_default_weights.py runs/default-weights/last.safetensors
    python scripts/package_default_weights.py RUN/last.safetensors --out-dir /tmp/w   # anywhere else

The card (src/maskdepth/weights/default.json) records the data and recipe the weights were trained with, their
metrics on a freshly generated procedural test set (CARD_EVAL below: tests/test_default_weights.py regenerates
it and checks the metrics), their real-photo benchmark beside the differencing baseline where real photos are at
hand (benchmarks/real_photos.py; never trained on), the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from maskdepth.checkpoint import DEFAULT_CARD, DEFAULT_WEIGHTS
from maskdepth.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# the source tree's copy of the package folder that checkpoint.DEFAULT_WEIGHTS names
WEIGHTS = ROOT / "src" / "maskdepth" / Path(DEFAULT_WEIGHTS).parent
WEIGHTS_FILE, CARD_FILE = Path(DEFAULT_WEIGHTS).name, Path(DEFAULT_CARD).name
# The procedural test set of the card: rooms and cutouts the weights never saw (another seed), all held out.
# "compose": the ComposeConfig fields that differ from today's defaults, so the set stays the one the card was
# measured on when the composition gains effects (cast shadows, reflections, camouflage, shading came later)
# "fg_kinds" likewise pins the cutout kinds the set was drawn from (bicycles came later)
CARD_EVAL = {"size": 96, "backgrounds": 12, "foregrounds": 10, "per_pair": 2, "seed": 20261123,
             "test_fraction": 0.5,
             "compose": {"cast_prob": 0.0, "reflection_prob": 0.0, "camo_prob": 0.0, "shade_prob": 0.0},
             "fg_kinds": ["person", "animal", "plant", "lamp", "chair", "table", "furniture", "blob"]}


def make_card_dataset(out: Path, size: int | None = None) -> Path:
    """The card's test set in `out`, at its own size or (benchmarks/procedural_sizes.py) at `size`."""
    from maskdepth.data.compose import ComposeConfig
    from maskdepth.data.make import MakeConfig, make_dataset

    c = CARD_EVAL
    side = size or c["size"]
    make_dataset(out, MakeConfig(size=(side, side), backgrounds=c["backgrounds"],
                                 foregrounds=c["foregrounds"], per_pair=c["per_pair"], seed=c["seed"],
                                 test_fraction=c["test_fraction"], shard_size=500,
                                 compose=ComposeConfig(**c.get("compose", {})),
                                 fg_kinds=tuple(c["fg_kinds"]) if c.get("fg_kinds") else None),
                 workers=2, progress=False)
    return out


def _training_data(run: Path) -> dict:
    """What the run trained on: the on-the-fly generator's settings, or the dataset's own record of the command
    that made it."""
    config = tomllib.loads((run / "config.toml").read_text())
    d = load_config(run / "config.toml").data  # read through the config's mapping of earlier spellings
    if d.train_source == "procedural":
        return {"kind": "procedural rooms and cutouts composed on the fly (data.train_source = procedural)",
                "size": d.size, "backgrounds": d.gen_backgrounds, "cutouts": d.gen_cutouts,
                "seed": config["train"]["seed"], "compose": config.get("compose", {}),
                "capture": config.get("capture", {}), "augment": config.get("augment", {})}
    meta = json.loads((ROOT / d.dir / "metadata.json").read_text())
    return {"kind": "procedural rooms and cutouts (maskdepth data make)",
            "command": meta["command"].replace(" OUT ", f" {d.dir} ", 1), "counts": meta["counts"]}


def real_photo_figures(weights: Path) -> dict | None:
    """benchmarks/real_photos.py on `weights` (predict's default settings), or None without real photos."""
    bench = ROOT / "benchmarks" / "real_photos.py"
    sys.path.insert(0, str(bench.parent))
    from real_photos import REALSET

    if not REALSET.is_dir():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "real.json"
        subprocess.run([sys.executable, str(bench), "--ckpt", str(weights), "--out", str(out)], check=True)
        report = json.loads(out.read_text())
    return {k: report[k] for k in ("data", "work_size", "conditions")}


def _training_summary(run: Path, run_info: dict) -> dict:
    """Steps, batch, sizes and wall-clock time of the (last stage's) run, read from its metrics.jsonl and run.json."""
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


def _chain_steps(command: str) -> dict:
    """The training stages of a recipe's command (each `maskdepth train` in it, read by the CLI's own parser, so
    --config, --steps and --set count as they would) and their steps summed: the card's other figures describe
    the last stage's run only."""
    import shlex

    from maskdepth.cli import build_parser
    from maskdepth.cli.train import SHORT_FLAGS
    from maskdepth.errors import UserError
    from maskdepth.train.config import load_config

    steps = []
    for part in command.split(";"):
        words = shlex.split(part)
        if words[:2] != ["maskdepth", "train"]:
            continue
        try:
            args = build_parser().parse_args(words[1:])
            if args.resume:  # continues a stage already counted
                continue
            overrides = {k: getattr(args, f) for f, k in SHORT_FLAGS.items() if getattr(args, f) is not None}
            steps.append(load_config(args.config, args.sets, overrides).train.steps)
        except (UserError, SystemExit):  # a stage this checkout cannot read: no total rather than a wrong one
            return {}
    return {"stages": len(steps), "total_steps": sum(steps)} if steps else {}


def package(ckpt: Path, run: Path, out_dir: Path = WEIGHTS, config: str = "default-weights",
            command: str = "maskdepth train --config default-weights --out runs/default-weights",
            real: bool = True) -> dict:
    """Write `out_dir`/WEIGHTS_FILE (default.safetensors) and its card CARD_FILE (default.json); return the card."""
    from maskdepth import __version__
    from maskdepth.checkpoint import header_info, load_model_from_checkpoint, save_checkpoint
    from maskdepth.evaluate import evaluate_checkpoint
    from maskdepth.fileio import atomic_write_text

    model, header = load_model_from_checkpoint(ckpt)  # the header as read_checkpoint gives it
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    save_checkpoint(weights, model, header_info(header))
    with tempfile.TemporaryDirectory() as tmp:
        record, _ = evaluate_checkpoint(weights, make_card_dataset(Path(tmp) / "card"), "test",
                                        size=CARD_EVAL["size"], workers=2, progress=False, aligned=True)
    run_info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    card = {
        "model": header["model"],
        "model_kwargs": header["model_kwargs"],
        "params": sum(p.numel() for p in model.parameters()),
        "file": WEIGHTS_FILE,
        "depth": header.get("depth"),
        "train_size": header.get("train_size"),
        "data": _training_data(run),
        "recipe": {"config": config, "command": command, **_training_summary(run, run_info), **_chain_steps(command)},
        "evaluation": {"what": "freshly generated procedural test set (unseen rooms and cutouts)",
                       "dataset": CARD_EVAL, "samples": record["samples"],
                       "metrics": {k: round(v, 4) for k, v in record["metrics"].items()}},
        "real_photos": real_photo_figures(weights) if real else None,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU ({platform.system()})",
        "versions": {"maskdepth": __version__, **run_info.get("versions", {})},
    }
    atomic_write_text(out_dir / CARD_FILE, json.dumps(card, indent=2) + "\n")
    m = card["evaluation"]["metrics"]
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and {CARD_FILE}: mask IoU "
          f"{m['mask_iou']:.3f}, depth delta1 {m['depth_delta1']:.3f} (aligned {m['aligned_depth_delta1']:.3f}), "
          f"AbsRel {m['depth_absrel']:.3f}")
    for cond, r in (card["real_photos"] or {}).get("conditions", {}).items():
        print(f"real photos, {cond}: mask IoU {r['model']['mask_iou']:.3f} (differencing "
              f"{r['baseline']['mask_iou']:.3f})")
    return card


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--run", type=Path, help="the run folder (default: the checkpoint's folder)")
    ap.add_argument("--out-dir", type=Path, default=WEIGHTS, help="where the weights and card go (default: the "
                                                                   "package's weights folder)")
    ap.add_argument("--config", default="default-weights",
                    help="the recipe's config (a shipped config's name), for the card")
    ap.add_argument("--command", default="maskdepth train --config default-weights --out "
                                         "runs/default-weights", help="the recipe's command, for the card")
    ap.add_argument("--no-real", action="store_true", help="skip the real-photo benchmark")
    args = ap.parse_args()
    package(args.ckpt, args.run or args.ckpt.parent, args.out_dir, args.config, args.command, not args.no_real)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    raise SystemExit(main())
