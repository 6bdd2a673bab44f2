"""`maskdepth models`: the registered networks and what they cost."""

from __future__ import annotations

import argparse

DESCRIPTION = """List the registered models: name, parameters, forward GFLOPs per sample and activation memory
per sample at SIZE x SIZE (default 192). FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one
forward pass (multiply-add = 2 FLOPs); activation memory is the bytes of the tensors autograd saves for backward
in one training-mode forward pass (fp32, parameters excluded). Both are computed on the meta device, without
running the networks. Build any of them with maskdepth.models.create_model(NAME, **kwargs)."""


def register(sub) -> None:
    p = sub.add_parser("models", help="list the models with parameters, GFLOPs and activation memory",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=192, metavar="SIZE", help="square input side (default 192)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from maskdepth.errors import UserError
    from maskdepth.models import ALIASES, list_models, model_summary
    from maskdepth.models.stats import model_stats

    if not 8 <= args.size <= 4096:
        raise UserError(f"--size {args.size}: out of range; give a side between 8 and 4096 pixels")
    aliases = {target: name for name, target in ALIASES.items()}
    rows = []
    for name in list_models():
        row = model_stats(name, size=args.size).as_dict()
        row["alias"] = aliases.get(name)
        row["summary"] = model_summary(name)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<27} {'params':>11} {f'GFLOPs@{args.size}':>11} {f'act MB@{args.size}':>11}  description"
    print(header)
    for r in rows:
        name = r["name"] + (f" ({r['alias']})" if r["alias"] else "")
        print(f"{name:<27} {r['params']:>11,} {r['gflops']:>11.2f} {r['activation_mb']:>11.1f}  {r['summary']}")
    print("GFLOPs: forward per sample; act MB: tensors saved for backward per sample (fp32)")
    return 0
