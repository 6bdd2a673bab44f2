"""Re-estimate a checkpoint's BatchNorm statistics over several working sizes.

    python scripts/reestimate_bn.py RUN/last.safetensors OUT.safetensors --sizes 96 128 160 192

A run that changes its working size per epoch ends with the running statistics of its last epoch's size (they
are an exponential average with momentum 0.1), so the weights are tuned to every size they trained at but
normalised for one. This recomputes each BatchNorm's mean and variance as a plain average over fresh procedural
batches at every size given (no gradients, the weights untouched) and writes a new checkpoint with the same
header, atomically. `--native` also marks it as holding across sizes (train.predict_native).

The batches are drawn the way the run drew its own: with the [compose] and [capture] of its config (the run's
config.toml beside the checkpoint, or `--config FILE|NAME`), so that a stage trained on, say, brightness
camouflage or furnished rooms is normalised for that data; without either, the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch


def reestimate(model: torch.nn.Module, batches, sizes: list[int]) -> int:
    """Reset every BatchNorm and average its statistics over `batches` (an iterator of generator batches at
    the largest size) resized to each of `sizes` in turn; returns the number of forward passes."""
    from maskdepth.data.augment import resize_batch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every pass below
    model.train()
    passes = 0
    with torch.no_grad():
        for batch in batches:
            for size in sizes:
                b = resize_batch(batch, size) if batch["image"].shape[-1] != size else batch
                model(b["bg"], b["image"])
                passes += 1
    for m in norms:
        m.momentum = 0.1
    model.eval()
    return passes


def stage_data(ckpt: Path, config: str | None):
    """(ComposeConfig, CaptureConfig or None, where they came from) of the run that wrote `ckpt`."""
    from maskdepth.data.capture import CaptureConfig
    from maskdepth.data.compose import ComposeConfig
    from maskdepth.train.config import load_config
    from maskdepth.train.data import capture_of, compose_of

    if config is None and (ckpt.parent / "config.toml").is_file():
        config = str(ckpt.parent / "config.toml")
    if config is None:
        return ComposeConfig(), CaptureConfig(), "defaults"
    cfg = load_config(config)
    return compose_of(cfg), capture_of(cfg), str(config)


def main() -> int:
    from maskdepth.checkpoint import header_info, load_model_from_checkpoint, save_checkpoint
    from maskdepth.data.generator import OnTheFlyGenerator
    from maskdepth.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", nargs="+", type=int, default=[96, 128, 160, 192])
    ap.add_argument("--batches", type=int, default=30, help="generator batches, each run at every size")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=777, help="generator seed (rooms no shipped recipe trains on)")
    ap.add_argument("--native", action="store_true", help="write predict_native = true into the header")
    ap.add_argument("--config", default=None, help="the run's config (its [compose] and [capture] draw the "
                                                   "batches); default: config.toml beside the checkpoint")
    args = ap.parse_args()
    if args.out.resolve() == args.ckpt.resolve():
        raise UserError(f"{args.out}: is the input checkpoint; write the re-estimated weights to a new file")
    if min(args.sizes) < 8 or args.batches < 1:
        raise UserError("--sizes must be >= 8 and --batches >= 1")
    model, header = load_model_from_checkpoint(args.ckpt)
    compose, capture, source = stage_data(args.ckpt, args.config)
    gen = OnTheFlyGenerator.procedural(200, 100, max(args.sizes), seed=args.seed, batch_size=args.batch_size,
                                       compose=compose, capture=capture)
    print(f"drawing batches with the [compose] and [capture] of {source}")
    passes = reestimate(model, (gen.next_batch() for _ in range(args.batches)), sorted(args.sizes))
    info = header_info(header)
    info["bn_reestimated"] = {"sizes": sorted(args.sizes), "batches": args.batches,
                              "batch_size": args.batch_size, "seed": args.seed,
                              "compose": dataclasses.asdict(compose), "capture": capture is not None}
    if args.native:
        info["predict_native"] = True
    save_checkpoint(args.out, model, info)
    print(f"wrote {args.out}: BatchNorm statistics over {passes} passes at sizes {sorted(args.sizes)}")
    return 0


if __name__ == "__main__":
    from maskdepth.errors import UserError

    try:
        raise SystemExit(main())
    except UserError as e:  # a bad path or checkpoint is one line, not a traceback
        raise SystemExit(f"error: {e}") from None
