"""Train the default weights for a fixed number of minutes on the on-the-fly generator, then package and evaluate
them: one call, for a machine with a GPU.

    python scripts/train_default.py --minutes 10                 # the shipped default-weights-gpu on CUDA
    python scripts/train_default.py --tiny                       # dry run on the CPU: tiny settings, minutes,
                                                                 # weights and card into a temporary folder

The plan is sized to the time: a few timed training steps at the final size give the step rate, the run gets
that many steps over `train.resize`'s epochs (so the learning-rate schedule ends when the time does), and
train.time_budget_s stops it in any case. Then scripts/package_default_weights.py writes the weights and their
card (procedural test set; the real-photo benchmark where real photos are at hand). `--out-dir` other than the
package's weights folder leaves the shipped weights alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "default-weights-gpu"  # a shipped config's name, or a TOML file
TINY = {"data.size": 32, "data.gen_backgrounds": 4, "data.gen_cutouts": 4, "data.gen_eval_batches": 1,
        "train.batch_size": 4, "train.resize": [[24, 1], [32, 1]], "train.compile": False,
        "train.checkpoint_every": 0, "train.log_every": 5, "train.samples": 2}


def step_rate(config, device: torch.device) -> float:
    """Training steps per second of the configured model at the last stage's size and batch (benchmarks/league.py
    times the step)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from league import sample_rate

    t = config.train
    size = t.resize[-1][0] if t.resize else config.data.size
    batch = t.resize[-1][2] if t.resize and len(t.resize[-1]) == 3 else t.batch_size
    return sample_rate(config.model.name, size, batch, device, config.model.kwargs, t.amp) / batch


def main() -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from package_default_weights import WEIGHTS, package

    from maskdepth.device import resolve_device
    from maskdepth.train.config import load_config
    from maskdepth.train.loop import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training time (default %(default)s)")
    ap.add_argument("--config", default=CONFIG, help="training config (default %(default)s)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "default-gpu", help="run folder")
    ap.add_argument("--out-dir", type=Path, default=None, help="weights and card (default: the package's "
                                                                "weights folder; with --tiny a temporary one)")
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead of the estimate (the "
                                                            "time is still the limit)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny settings, 0.5 minutes, no real photos")
    ap.add_argument("--force", action="store_true", help="replace an existing run folder")
    args = ap.parse_args()
    minutes = 0.5 if args.tiny else args.minutes
    config = load_config(args.config, args.set, TINY if args.tiny else None)
    device = resolve_device(args.device if not args.tiny else "cpu", local_rank=0)
    epochs = sum(s[1] for s in config.train.resize) if config.train.resize else config.train.epochs
    if args.steps:
        steps, how = args.steps, "given"
    else:
        rate = step_rate(config, device) * 0.85  # the data and the bookkeeping cost a little beside the step
        steps, how = max(epochs, int(rate * minutes * 60)), f"{rate:.2f} steps/s measured"
    config = load_config(args.config, args.set, {
        **(TINY if args.tiny else {}), "train.device": str(device), "train.steps": steps,
        "train.epoch_steps": -(-steps // epochs), "train.time_budget_s": minutes * 60})
    print(f"train_default: {config.model.name}, {steps} steps ({how}) in at most {minutes:g} min on {device}",
          file=sys.stderr)
    train(config, args.out, force=args.force, argv=sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or (Path(tmp) if args.tiny else WEIGHTS)
        card = package(args.out / "last.safetensors", args.out, out_dir, config=args.config,
                       command=" ".join(["python", *sys.argv]),
                       real=not args.tiny)
        print(json.dumps({"steps": card["recipe"]["steps"], "metrics": card["evaluation"]["metrics"],
                          "real_photos": card["real_photos"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
