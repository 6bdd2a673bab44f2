"""`maskdepth train`, `maskdepth evaluate` and `maskdepth plot`."""

from __future__ import annotations

import argparse
from pathlib import Path

# short flag -> config key; each is the same as --set KEY=VALUE
SHORT_FLAGS = {
    "data": "data.dir", "generator": "data.generator", "size": "data.size", "workers": "data.workers",
    "model": "model.name", "init": "model.init", "epochs": "train.epochs", "steps": "train.steps",
    "batch_size": "train.batch_size", "device": "train.device", "seed": "train.seed", "lr": "optim.lr",
}


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (CPU, one GPU, or many GPUs under torchrun)",
        description="Train a model from a TOML config with overrides. Multi-GPU: torchrun --nproc_per_node N "
                    "-m maskdepth train ... (every process gets the same arguments).",
        epilog="examples: maskdepth train --config cpu-quick --out runs/quick\n"
               "          maskdepth train --generator procedural --set train.epoch_steps=200 --out runs/gen\n"
               "          maskdepth train --resume runs/quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE|NAME",
                   help="TOML config file, or the name of one shipped with maskdepth (cpu-quick, gpu, finetune, "
                        "seed-recipe, default-weights, ...); defaults for anything unset")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="sets",
                   help="override one config value (TOML syntax: 1e-3, true, [[64, 2], [128, 1]]); repeatable")
    p.add_argument("--data", metavar="DIR", help="dataset folder (data.dir)")
    p.add_argument("--generator", choices=["procedural", "dataset"],
                   help="on-the-fly data: procedural rooms, or the backgrounds and cutouts of --data")
    p.add_argument("--model", metavar="NAME", help="registered model (maskdepth models lists them)")
    p.add_argument("--init", metavar="default|CKPT",
                   help="fine-tune: start from the packaged default weights or a checkpoint")
    p.add_argument("--out", metavar="RUN", help="run folder to create")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN exactly where its last state was saved")
    p.add_argument("--more-seconds", type=float, metavar="S",
                   help="with --resume: train at most S more seconds, then stop with a checkpoint (resume again "
                        "to go on: a long run over several sittings)")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="stop after this many steps in all")
    p.add_argument("--batch-size", type=int, help="global batch size (split over processes)")
    p.add_argument("--size", type=int, help="training side in pixels")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="loader worker processes per process")
    p.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="every metric of a checkpoint on a dataset split",
                       description="Evaluate a checkpoint: a table on screen, metrics.json, metrics.md and "
                                   "worst.png (the worst samples by mask IoU and by depth RMSE).")
    e.add_argument("ckpt", metavar="CKPT", help="model checkpoint (.safetensors)")
    e.add_argument("--data", metavar="DIR", required=True, help="dataset folder")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--out", metavar="DIR", help="where to write the results (default: beside CKPT, "
                                                "eval-SPLIT/)")
    e.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out folder")
    e.add_argument("--tta", action="store_true", help="average with the horizontally flipped prediction")
    e.add_argument("--size", type=int, help="side to evaluate at (default: the checkpoint's training size)")
    e.add_argument("--aligned", action="store_true", help="add depth metrics after per-image scale-and-shift "
                                                          "alignment (always on for relative depth)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--worst", type=int, default=8, metavar="K", help="worst samples per criterion in worst.png")
    e.add_argument("--limit", type=int, default=0, metavar="N", help="evaluate the first N samples only")
    e.add_argument("--device", default="auto")
    e.add_argument("--workers", type=int, default=2)
    e.set_defaults(func=_evaluate)

    pl = sub.add_parser("plot", help="loss and metric curves of a training run (PNG)",
                        description="Draw RUN/metrics.jsonl: losses (train and evaluation), metrics, learning "
                                    "rate over steps.")
    pl.add_argument("run", metavar="RUN", help="run folder")
    pl.add_argument("--out", metavar="PNG", help="output file (default RUN/curves.png)")
    pl.add_argument("--force", action="store_true", help="replace an existing --out file")
    pl.set_defaults(func=_plot)


def _train(args) -> int:
    from maskdepth.errors import UserError
    from maskdepth.train.config import load_config
    from maskdepth.train.loop import train
    from maskdepth.train.resume import load_state
    from maskdepth.train.rundir import CONFIG, command_line, open_existing

    overrides = {key: getattr(args, flag) for flag, key in SHORT_FLAGS.items() if getattr(args, flag) is not None}
    if args.resume:
        if args.out or args.config or args.sets or overrides or args.force:
            raise UserError(f"--resume {args.resume} continues the run as it was configured "
                            f"({Path(args.resume) / CONFIG}); give no other options with it")
        config = open_existing(args.resume)
        if args.more_seconds is not None:
            if not args.more_seconds > 0:
                raise UserError(f"--more-seconds {args.more_seconds}: give a number of seconds > 0")
            # the budget counts training time over the whole run; the state says how much is spent
            config.train.time_budget_s = load_state(Path(args.resume))["train_time"] + args.more_seconds
        train(config, args.resume, resume=True, argv=command_line())
        return 0
    if args.more_seconds is not None:
        raise UserError("--more-seconds goes with --resume RUN; for a new run set train.time_budget_s")
    if not args.out:
        raise UserError("give the run folder to write: --out RUN (or --resume RUN to continue one)")
    config = load_config(args.config, args.sets, overrides)
    train(config, args.out, force=args.force, argv=command_line())
    return 0


def _evaluate(args) -> int:
    from maskdepth.evaluate import run

    out = args.out or Path(args.ckpt).parent / f"eval-{args.split}"
    run(args.ckpt, args.data, args.split, out=out, worst_k=args.worst, force=args.force,
        batch_size=args.batch_size, size=args.size, tta=args.tta, device=args.device, workers=args.workers,
        limit=args.limit, aligned=args.aligned)
    return 0


def _plot(args) -> int:
    from maskdepth.plot import plot_run

    print(f"wrote {plot_run(args.run, args.out, force=args.force)}")
    return 0
