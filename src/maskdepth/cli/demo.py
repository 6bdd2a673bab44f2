"""`maskdepth demo`: the whole pipeline end to end on small procedural data, with an HTML report."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="make data, fine-tune, evaluate, predict and write an HTML report, in a few minutes",
        description="Run the whole pipeline on the built-in procedural data: make a small dataset, evaluate the "
                    "shipped default weights on its held-out rooms, fine-tune them briefly, evaluate again, "
                    "predict held-out pairs from files and write OUT/report.html. A folder holding an earlier "
                    "demo is replaced.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--steps", type=int, default=120, help="fine-tuning steps (default 120)")
    p.add_argument("--pairs", type=int, default=6, help="held-out pairs to predict and show (default 6)")
    p.add_argument("--workers", type=int, default=None, help="data processes (default: up to 2)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from maskdepth.demo import DemoConfig, check, run_demo

    cfg = DemoConfig(size=args.size, steps=args.steps, pairs=args.pairs)
    check(cfg)
    run_demo(args.out, cfg, workers=args.workers)
    return 0
