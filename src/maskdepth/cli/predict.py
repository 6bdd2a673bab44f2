"""`maskdepth predict` commands."""

from __future__ import annotations


def register(sub) -> None:
    pass
