"""The one reading of an image size the user types: "N" (a square) or "HxW" (height x width)."""

from __future__ import annotations

import re

from maskdepth.errors import UserError

_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*")


def parse_size(text: str, flag: str = "--size", minimum: int = 1) -> tuple[int, int]:
    """'192' -> (192, 192); '192x256' -> (192, 256). Raises UserError naming `flag` for anything else, or for a
    side below `minimum`."""
    m = _SIZE.fullmatch(str(text))
    h, w = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if min(h, w) < minimum:
        raise UserError(f"{flag} {text}: not a size; give one side or HxW (e.g. 192 or 192x256), each at least "
                        f"{minimum}")
    return h, w
