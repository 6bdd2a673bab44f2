"""Model checkpoints: one safetensors file, weights plus a JSON header. Loading runs no code from the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path, require_file

HEADER_KEY = "maskdepth"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, info: dict[str, Any] | None = None) -> None:
    """Write `model`'s weights and how to rebuild it (model_name, model_kwargs) plus `info` atomically."""
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    header = {
        "format_version": FORMAT_VERSION,
        "model": model.model_name,
        "model_kwargs": model.model_kwargs,
        **(info or {}),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, header). Refuses files that are not maskdepth checkpoints with one clear line."""
    from safetensors import SafetensorError, safe_open

    path = require_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({e}); use a file written by "
                        "`maskdepth train` or `maskdepth.checkpoint.save_checkpoint`") from None
    if HEADER_KEY not in meta:
        raise UserError(f"{path}: safetensors file without a maskdepth header; it was not written by maskdepth")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt maskdepth header; re-export the checkpoint") from None
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {header.get('format_version')} is newer than this maskdepth "
                        f"reads ({FORMAT_VERSION}); upgrade maskdepth")
    return state, header


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Copy into `model` every tensor of `state` with the same name and shape; a weight that differs only by
    having more input channels (dim 1) takes the old channels and keeps zeros for the new ones, so the grown
    network starts out computing what the old one did on its old inputs. Returns counts of copied, widened and
    fresh (left as initialised) tensors."""
    own = model.state_dict()
    counts = {"copied": 0, "widened": 0, "fresh": 0}
    with torch.no_grad():
        for name, t in own.items():
            old = state.get(name)
            if old is not None and old.shape == t.shape:
                t.copy_(old)
                counts["copied"] += 1
            elif (old is not None and old.dim() == t.dim() >= 2 and old.shape[0] == t.shape[0]
                  and old.shape[2:] == t.shape[2:] and old.shape[1] < t.shape[1]):
                t.zero_()
                t[:, :old.shape[1]].copy_(old)
                counts["widened"] += 1
            else:
                counts["fresh"] += 1
    return counts


def load_model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights. Returns (model, header)."""
    from maskdepth.models import create_model

    state, header = read_checkpoint(path)
    try:
        model = create_model(header["model"], **header.get("model_kwargs", {}))
    except KeyError:
        raise UserError(f"{path}: header names no model; it was not written by maskdepth") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # a tensor of the wrong shape
        missing, unexpected = ["(shape mismatch)"], []
    if missing or unexpected:
        raise UserError(
            f"{Path(path)}: weights do not fit model '{header['model']}' "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors); the file is corrupt or was edited"
        )
    return model.to(map_location).eval(), header
