"""The network a run trains: built fresh or from model.init (through checkpoint.py, the one owner of
checkpoint-to-model), its optimizer, its train mode, and its BatchNorm statistics of the last good step."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from maskdepth.checkpoint import default_weights, model_from_state, read_checkpoint
from maskdepth.models import create_model
from maskdepth.train.config import Config


def build_model(config: Config, depth_max: float, data_unit: str = "metres",
                quiet: bool = False) -> tuple[nn.Module, str]:
    """The model to train: fresh from the registry, or (model.init) weights from a checkpoint or the packaged
    default. A fresh model takes depth_max from the data; an initialised one keeps its own when the depth unit is
    the same. `quiet` leaves out the notes on how it was initialised (a resume: state.pt's weights replace them).
    Returns (model, what it was initialised from)."""
    m = config.model
    if not m.init:
        return create_model(m.name, **{**m.kwargs, "depth_max": depth_max}), "random"
    path = default_weights("no default weights in this installation; give --init a checkpoint path instead") \
        if m.init == "default" else Path(m.init)
    state, header = read_checkpoint(path)
    kwargs = {**header.get("model_kwargs", {}), **m.kwargs}
    same_unit = (header.get("depth") or {}).get("unit") == data_unit
    if not same_unit or "depth_max" not in kwargs:
        kwargs["depth_max"] = depth_max  # another unit: the depth head starts over on the data's scale
    elif kwargs["depth_max"] < depth_max and not quiet:
        # the checkpoint's depth head is kept on its own scale (rescaling it would undo what it learned)
        print(f"note: {path} predicts depth up to {kwargs['depth_max']:g} {data_unit}, the data reaches "
              f"{depth_max:g}; deeper pixels are learned as that bound", file=sys.stderr)
    if m.init_mode == "matching":
        kwargs = {k: v for k, v in kwargs.items() if k in ("depth_max", *m.kwargs)}
        model, counts = model_from_state(path, state, header, kwargs=kwargs, matching=m.name)
        if not quiet:
            print(f"note: {m.name} from {path} ({header['model']}): {counts['copied']} tensors copied, "
                  f"{counts['widened']} widened, {counts['fresh']} fresh", file=sys.stderr)
        return model, str(path)
    model, _ = model_from_state(path, state, header, kwargs=kwargs, hint="check the [model] kwargs given")
    return model, str(path)


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class BufferGuard:
    """Keeps a copy of the model's floating-point buffers (BatchNorm statistics) from the last good step, so a
    skipped step (non-finite loss) leaves no NaN behind in them."""

    def __init__(self, model: nn.Module):
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.buffers]

    def keep(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)
