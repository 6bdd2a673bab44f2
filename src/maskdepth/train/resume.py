"""The resumable state (RUN/state.pt): what it holds, how it is written, and how a run is put back from it.

It holds the loop's position (`LoopPosition`), the weights, optimizer and scheduler states, every RNG the loop
draws from, each rank's data position (the generator's; a loader's is the step count) and the process count. A
run continued from it takes the same steps, bit for bit on the CPU, as one that was never stopped. The keys are
those of every earlier state.pt, so runs begun before stay resumable (`last_eval`, added later, may be missing).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path
from maskdepth.train.data import TrainData
from maskdepth.train.dist import DeviceRank
from maskdepth.train.rundir import STATE


@dataclass
class LoopPosition:
    """Where the loop is and what it carries from step to step."""

    step: int = 0
    epoch: int = 0             # 0-based: the epoch being run (== the number of epochs when done)
    batch_in_epoch: int = 0
    best: float | None = None  # the best evaluation value so far (train.best_metric)
    bad_in_row: int = 0        # non-finite steps skipped in a row
    train_time: float = 0.0    # seconds of training (evaluation not counted): train.time_budget_s
    last_eval: dict[str, Any] = field(default_factory=dict)  # the latest evaluation record: checkpoint headers


def save_state(run: Path, place: DeviceRank, pos: LoopPosition, model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, data: TrainData) -> None:
    """Write RUN/state.pt atomically (rank 0 writes; every rank must call it, for its data position)."""
    data_state = data.state_dict()
    if place.distributed and data_state:
        gathered: list[Any] = [None] * place.world_size
        dist.all_gather_object(gathered, data_state)
        data_state = {"ranks": gathered}
    elif data_state:
        data_state = {"ranks": [data_state]}
    if not place.main:
        return
    state = {
        "step": pos.step, "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_state(), "data": data_state, "best": pos.best, "bad_in_row": pos.bad_in_row,
        "train_time": pos.train_time, "world_size": place.world_size, "last_eval": pos.last_eval,
    }
    # serialised in memory first: torch.save onto a full disk fails with an opaque RuntimeError, a plain write
    # with OSError, which atomic_path turns into one line naming the file
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(run / STATE) as tmp:
        tmp.write_bytes(buf.getbuffer())


def load_state(run: Path) -> dict[str, Any]:
    """RUN/state.pt as saved (tensors on the CPU); UserError when it cannot be read."""
    p = run / STATE
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same one-line answer
        raise UserError(f"{p}: unreadable resumable state ({type(e).__name__}); start the run again with "
                        "--force") from None


def restore_state(state: dict[str, Any], run: Path, place: DeviceRank, model: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, data: TrainData) -> LoopPosition:
    """Put weights, optimizer, scheduler, this rank's data position and the RNGs back; return the position."""
    if state["world_size"] != place.world_size:
        raise UserError(f"{run}: the run was made with {state['world_size']} process(es); resume it "
                        f"with the same number (now {place.world_size})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    pos = LoopPosition(state["step"], state["epoch"], state["batch_in_epoch"], state["best"], state["bad_in_row"],
                       state["train_time"], state.get("last_eval", {}))
    if state["data"]:
        data.load_state_dict(state["data"]["ranks"][place.rank])
    set_rng_state(state["rng"])
    return pos


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may draw from, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x
