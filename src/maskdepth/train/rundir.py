"""The run directory: everything one training run writes, and what `--resume` reads back.

RUN/
  run.json          marker: command line, package / torch / Python versions, device, world size
  config.toml       the resolved config (`maskdepth train --config RUN/config.toml` repeats the run)
  metrics.jsonl     one JSON object per train log, evaluation or skipped step
  tb/               TensorBoard events
  samples/          sample grids, one PNG per epoch
  last.safetensors  the latest weights;  best.safetensors  the best by train.best_metric
  state.pt          resumable state (weights, optimizer, scheduler, position, RNG): train/resume.py
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth import __version__
from maskdepth.errors import UserError
from maskdepth.fileio import (
    OutputKind,
    atomic_write_text,
    prepare_output_dir,
    remove_stale_temps,
    write_error,
)
from maskdepth.train.config import Config, load_config, to_toml

MARKER = "run.json"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
STATE = "state.pt"
LAST = "last.safetensors"
BEST = "best.safetensors"
CURVES = "curves.png"  # `maskdepth plot`'s default output
RUN_OUTPUT = OutputKind("run folder", markers=(MARKER,), owned=(
    MARKER, CONFIG, METRICS, STATE, LAST, BEST, CURVES, "tb/events.out.tfevents.*", "samples/epoch-*.png"))


def is_run(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def check_new(path: str | Path, force: bool, inputs: list[str | Path | None] = ()) -> None:
    """Refuse to start a run in an existing run (suggesting --resume) or in a non-empty folder that is not a
    run, or where it would lie over one of its `inputs` (fileio.prepare_output_dir). Changes nothing, so every
    rank can ask before one of them creates the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder; choose another --out path")
    out = path.resolve()
    for i in inputs:
        if i is not None and (Path(i).resolve() == out or out in Path(i).resolve().parents):
            raise UserError(f"{i}: an input of this run lies inside --out {path}; choose a run folder that does not "
                            "hold the run's data or weights")
    if not path.is_dir() or (force and is_run(path)):
        return
    if is_run(path):
        raise UserError(f"{path}: already holds a training run; continue it with --resume {path}, "
                        "or pass --force to start over in it")
    if any(path.iterdir()) and not RUN_OUTPUT.is_own(path):
        raise UserError(f"{path}: folder is not empty and is not a maskdepth run; choose an empty or new "
                        "folder (--force never removes files maskdepth did not write)")


def create(path: str | Path, config: Config, argv: list[str], force: bool, extra: dict[str, Any],
           inputs: list[str | Path | None] = ()) -> Path:
    """Start a new run folder (after `check_new`); with `force` the files of an earlier run there are removed."""
    path = Path(path)
    check_new(path, force, inputs)
    prepare_output_dir(path, RUN_OUTPUT, force=True, inputs=inputs)
    info = {
        "format": "maskdepth-run",
        "argv": argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"maskdepth": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "numpy": np.__version__},
        **extra,
    }
    atomic_write_text(path / CONFIG, to_toml(config))
    atomic_write_text(path / MARKER, json.dumps(info, indent=2) + "\n")
    return path


def open_existing(path: str | Path) -> Config:
    """The config of run `path`, for --resume; UserError when it is not a resumable run."""
    path = Path(path)
    if not is_run(path):
        raise UserError(f"{path}: not a maskdepth training run (no {MARKER}); give the folder a "
                        "`maskdepth train --out RUN` wrote")
    if not (path / STATE).is_file():
        raise UserError(f"{path}: the run saved no resumable state yet (no {STATE}); start it again with "
                        f"--out {path} --force")
    return load_config(path / CONFIG)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    try:
        with open(path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(_plain(record), sort_keys=True) + "\n")
    except OSError as e:
        raise write_error(path / METRICS, e) from None


def _plain(x: Any) -> Any:
    """NaN and infinities as the strings "nan", "inf", "-inf": strict JSON for any reader."""
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl that are JSON objects with a numeric step (a torn last line from a crash,
    or a damaged line, is passed over)."""
    p = Path(path) / METRICS
    if not p.is_file():
        raise UserError(f"{p}: not found; give the folder of a `maskdepth train` run")
    try:
        text = p.read_bytes().decode("utf-8", "replace")
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror or e}); check the file") from None
    records = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        step = r.get("step") if isinstance(r, dict) else None
        if isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step):
            records.append(r)
    return records


def clean_for_resume(path: Path, step: int) -> None:
    """Before --resume continues: drop metrics logged after `step` and the hidden temporary files of writes a
    kill interrupted (a checkpoint's can be megabytes)."""
    truncate_metrics(path, step)
    for folder in (path, path / "samples"):
        remove_stale_temps(folder)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after `step` (work lost in a crash and done again after --resume), and damaged ones."""
    p = path / METRICS
    if p.is_file():
        keep = [json.dumps(r, sort_keys=True) for r in read_metrics(path) if r["step"] <= step]
        atomic_write_text(p, "".join(line + "\n" for line in keep))


def command_line() -> list[str]:
    """This process's command line, the program named `maskdepth` when it was (python -m maskdepth, the
    script, or torchrun -m maskdepth)."""
    program = sys.argv[0]
    if Path(program).name in ("maskdepth", "__main__.py"):
        program = "maskdepth"
    return [program, *sys.argv[1:]]
