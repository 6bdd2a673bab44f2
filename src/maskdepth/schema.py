"""Typed reading of untrusted JSON (dataset metadata, checkpoint headers): every value that is used is checked
for its type and range before use, so a damaged or crafted file is one clear line, not a traceback deep inside
or an allocation the size of a number in it."""

from __future__ import annotations

import math
from typing import Any

from maskdepth.errors import UserError

_MISSING: Any = object()


class Reader:
    """Checks values of the JSON object of file `path`; a failure names the file, the key and the fix."""

    def __init__(self, path: Any, fix: str):
        self.path, self.fix = path, fix

    def fail(self, key: str, why: str) -> UserError:
        return UserError(f"{self.path}: {key} {why}; {self.fix}")

    def _get(self, obj: dict, key: str, name: str, default: Any) -> Any:
        if key in obj:
            return obj[key]
        if default is _MISSING:
            raise self.fail(name, "is missing")
        return default

    def root(self, obj: Any) -> dict:
        if not isinstance(obj, dict):
            raise self.fail("the top level", f"is a {type(obj).__name__}, not an object")
        return obj

    def obj(self, obj: dict, key: str, name: str | None = None, default: Any = _MISSING) -> dict:
        v = self._get(obj, key, name or key, default)
        if not isinstance(v, dict):
            raise self.fail(name or key, f"is {_show(v)}, not an object")
        return v

    def list(self, obj: dict, key: str, max_len: int, name: str | None = None, default: Any = _MISSING) -> list:
        v = self._get(obj, key, name or key, default)
        if not isinstance(v, list):
            raise self.fail(name or key, f"is {_show(v)}, not a list")
        if len(v) > max_len:
            raise self.fail(name or key, f"has {len(v):,} entries, more than the {max_len:,} allowed")
        return v

    def str(self, obj: dict, key: str, name: str | None = None, default: Any = _MISSING,
            max_len: int = 256) -> str:
        v = self._get(obj, key, name or key, default)
        if not isinstance(v, str) or len(v) > max_len:
            raise self.fail(name or key, f"is {_show(v)}, not a name of at most {max_len} characters")
        return v

    def int(self, obj: dict | list, key: Any, lo: int, hi: int, name: str | None = None,
            default: Any = _MISSING) -> int:
        v = obj[key] if isinstance(obj, list) else self._get(obj, key, name or key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(name or str(key), f"is {_show(v)}, not a whole number in [{lo:,}, {hi:,}]")
        return v

    def positive(self, obj: dict, key: str, hi: float, name: str | None = None, default: Any = _MISSING) -> float:
        """A finite number in (0, hi]."""
        v = self._get(obj, key, name or key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and 0 < v <= hi):
            raise self.fail(name or key, f"is {_show(v)}, not a number in (0, {hi:g}]")
        return float(v)

    def pair(self, obj: dict, key: str, lo: int, hi: int, name: str | None = None, default: Any = _MISSING) -> list:
        """[H, W] of whole numbers in [lo, hi]."""
        v = self._get(obj, key, name or key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, list) or len(v) != 2:
            raise self.fail(name or key, f"is {_show(v)}, not [height, width]")
        return [self.int(v, i, lo, hi, name=f"{name or key}[{i}]") for i in range(2)]


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
