"""`maskdepth data ...`: make, import, show and stats. Each subcommand's arguments live beside its owner module."""

from __future__ import annotations

from maskdepth.cli import data_io, data_make


def register(sub) -> None:
    p = sub.add_parser("data", help="make, import, inspect datasets",
                       description="Make, import and inspect maskdepth datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_make.register(dsub)
    data_io.register(dsub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
