"""Progress for long work: a tqdm bar on a terminal, a plain line every few seconds otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Counts done units of `total`; `update(n, **info)` shows rate and any extra fields (loss=...)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every_s: float = 10.0,
                 enabled: bool = True, stream=None):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.shown = -1  # `done` when the last plain line was printed
        self.info: dict[str, object] = {}
        self.bar = None
        self.enabled = enabled
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                            smoothing=0.1)

    def update(self, n: int = 1, **info) -> None:
        self.done += n
        if info:
            self.info.update(info)
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix({k: _fmt(v) for k, v in self.info.items()}, refresh=False)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        self.shown = self.done
        rate = self.done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total and self.done <= self.total else ""
        extra = "".join(f" {k}={_fmt(v)}" for k, v in self.info.items())
        print(f"{self.desc}: {self.done}{of} {self.unit} ({rate:.1f} {self.unit}/s){extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.shown != self.done:
            self._line(time.perf_counter())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled=enabled) as p:
        for x in items:
            yield x
            p.update(1)
