"""`maskdepth` command line. Each command group lives in its own module with a `register(subparsers)`.

Modules here import only argparse-level things at import time; torch and friends are imported inside the
command functions so that `maskdepth --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from maskdepth import __version__
from maskdepth.errors import UserError

# command-group modules, in the order `--help` lists them
GROUPS = ["data", "models", "train", "predict", "calibrate", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskdepth",
        description="Foreground mask and depth from a background picture and a scene picture.",
    )
    parser.add_argument("--version", action="version", version=f"maskdepth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"maskdepth.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except UserError as e:
        print(f"maskdepth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maskdepth: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
