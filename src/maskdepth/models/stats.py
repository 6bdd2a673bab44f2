"""Cost of a model: parameters, forward GFLOPs and activation memory per sample, computed without running it.

Both are measured on the `meta` device (shapes only, no arithmetic), so the whole table takes about a second:
- FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward pass (a multiply-add counts 2; convolutions and
  matmuls only, which dominate every model here).
- Activation memory: the bytes of the distinct tensors autograd saves for backward during one training-mode
  forward pass (parameters excluded) — what a training step must hold until backward, per sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskdepth.models.registry import create_model


@dataclass(frozen=True)
class ModelStats:
    name: str
    params: int
    gflops: float  # forward, per sample
    activation_mb: float  # saved for backward, per sample, fp32
    size: int

    def as_dict(self) -> dict:
        return asdict(self)


def model_stats(name: str, size: int = 192, batch: int = 2, **kwargs) -> ModelStats:
    """Stats of model `name` built with `kwargs` at a `size` x `size` input, averaged over `batch` samples."""
    with torch.device("meta"):
        model = create_model(name, **kwargs).train()
        bg = torch.empty(batch, 3, size, size)
        image = torch.empty(batch, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as flops:
        model(bg, image)
    return ModelStats(name=model.model_name, params=params, gflops=flops.get_total_flops() / batch / 1e9,
                      activation_mb=sum(saved.values()) / batch / 2**20, size=size)
