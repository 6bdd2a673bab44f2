"""Arguments of `maskdepth data` subcommands (filled in by the module's owner)."""

from __future__ import annotations


def register(dsub) -> None:
    pass
