"""Where this process runs: device, and under torchrun its rank in the process group (torch.distributed)."""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maskdepth.device import resolve_device


@dataclass(frozen=True)
class DeviceRank:
    """This process's device and its rank among `world_size` processes (one process, rank 0, without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_name: str) -> DeviceRank:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; with more than one process, join the process group
    (NCCL on CUDA, gloo on the CPU). Without them: one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
    return DeviceRank(device, rank, world_size, local_rank)


def finish(place: DeviceRank) -> None:
    """After a run that ended well on every rank: wait for all ranks, and free the DDP wrapper, whose reducer
    holds the process group, so that teardown closes the group here rather than at interpreter exit. A rank
    that shut gloo down while its peer was still writing after the last collective (rank 0 saves the state
    after gathering it) could be aborted by the C++ runtime ("terminate called without an active
    exception")."""
    if place.distributed:
        gc.collect()
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_true(flag: bool, place: DeviceRank) -> bool:
    """True only if `flag` is true on every rank (the same answer everywhere, so every rank takes one path)."""
    if not place.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=place.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def all_mean(values: dict[str, float], place: DeviceRank) -> dict[str, float]:
    """Mean over ranks of each value (for logged losses)."""
    if not place.distributed or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=place.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / place.world_size).tolist()))
