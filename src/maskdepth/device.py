"""Which torch device a command runs on, and moving batches there (shared by training, evaluation and prediction)."""

from __future__ import annotations

import torch

from maskdepth.errors import UserError

Batch = dict[str, torch.Tensor]


def resolve_device(name: str | torch.device | None = None, local_rank: int | None = None) -> torch.device:
    """None or "auto" -> CUDA when there is one, else the CPU; otherwise the named device, which must exist here.

    `local_rank` (training, one process per GPU) pins a device without an index ("auto", "cuda") to that rank's
    GPU; without it such a device stays torch's current CUDA device. Only the CPU and CUDA are supported."""
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if (device.index or 0) >= torch.cuda.device_count():
            raise UserError(f"--device {device}: not available, this machine has {torch.cuda.device_count()} "
                            "GPU(s)")
    return device


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """Copy a batch to `device` (non-blocking from pinned memory); pictures channels_last when asked."""
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        if channels_last and v.dim() == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out
