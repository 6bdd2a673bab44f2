"""Model checkpoints: one safetensors file, weights plus a JSON header. Loading runs no code from the file."""

from __future__ import annotations

import json
import math
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path, require_file
from maskdepth.models import create_model
from maskdepth.onnx_model import HEADER_KEY, load_onnx_model
from maskdepth.schema import Reader

FORMAT_VERSION = 1
# The largest model a checkpoint header may ask for (about 1 GB of float32): the seeds' and our models are
# 0.6-16 M parameters.
MAX_PARAMS = 250_000_000
# The shipped default weights and their model card, relative to the installed package.
DEFAULT_WEIGHTS = "weights/default.safetensors"
DEFAULT_CARD = "weights/default.json"


def packaged_file(relative: str) -> Path:
    """The path of `relative` (e.g. DEFAULT_WEIGHTS) inside the installed package; it may not exist."""
    return Path(str(files("maskdepth").joinpath(relative)))


def default_weights(what_to_do: str) -> Path:
    """The shipped default weights; UserError (ending in `what_to_do`) in an installation without them."""
    path = packaged_file(DEFAULT_WEIGHTS)
    if not path.is_file():
        raise UserError(f"maskdepth/{DEFAULT_WEIGHTS}: {what_to_do}")
    return path


SAVED_KEYS = ("format_version", "model", "model_kwargs")  # what save_checkpoint writes itself


def header_info(header: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint header without what save_checkpoint writes itself: the `info` to save other weights with."""
    return {k: v for k, v in header.items() if k not in SAVED_KEYS}


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, info: dict[str, Any] | None = None) -> None:
    """Write `model`'s weights and how to rebuild it (model_name, model_kwargs) plus `info` atomically."""
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    header = {
        "format_version": FORMAT_VERSION,
        "model": model.model_name,
        "model_kwargs": model.model_kwargs,
        **(info or {}),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # serialised in memory, then written plainly: a full disk is then an OSError atomic_path reports in one line
    data = save(state, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, header). Refuses files that are not maskdepth checkpoints with one clear line."""
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
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"{path}: corrupt maskdepth header; re-export the checkpoint") from None
    return state, check_header(header, path)


def check_header(header: Any, path: Any) -> dict[str, Any]:
    """`header` with every value this package uses checked for type and range (UserError naming the key)."""
    r = Reader(path, "use a checkpoint written by `maskdepth train` (the file is damaged or was edited)")
    if not isinstance(header, dict):
        raise r.fail("the maskdepth header", f"is a {type(header).__name__}, not an object")
    version = r.int(header, "format_version", 0, 10 ** 6, default=FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version} is newer than this maskdepth reads "
                        f"({FORMAT_VERSION}); upgrade maskdepth")
    if "model" not in header:
        raise UserError(f"{path}: header names no model; it was not written by maskdepth")
    r.str(header, "model", max_len=128)
    kwargs = r.obj(header, "model_kwargs", default={})
    for key, value in kwargs.items():
        _check_kwarg(r, f"model_kwargs.{key}", value)
    if "depth_max" in kwargs:
        r.positive(kwargs, "depth_max", 1e9, "model_kwargs.depth_max")
    if header.get("train_size") is not None:
        r.pair(header, "train_size", 1, 16384)
    if not isinstance(header.get("predict_native", False), bool):
        raise r.fail("predict_native", "is not true or false")
    if "depth" in header and header["depth"] is not None:
        depth = r.obj(header, "depth")
        if "unit" in depth:
            r.str(depth, "unit", "depth.unit", max_len=32)
        for key in ("scale", "max"):
            if key in depth and depth[key] is not None:
                r.positive(depth, key, 1e9, f"depth.{key}")
    if "depth_unit" in header:
        r.str(header, "depth_unit", max_len=32)
    for key in ("depth_scale", "depth_max"):
        if key in header:
            r.positive(header, key, 1e9)
    return header


# Architecture arguments are widths, counts and names: a number above these (a block count of 1e308) would
# make even a build on the meta device run for ever. Numbers in lists are per-stage counts or sizes.
MAX_KWARG = 1_000_000
MAX_KWARG_ITEM = 1024
MAX_KWARG_LIST = 64


def _check_kwarg(r: Reader, name: str, value: Any) -> None:
    if isinstance(value, list):
        if len(value) > MAX_KWARG_LIST:
            raise r.fail(name, f"has {len(value):,} entries, more than the {MAX_KWARG_LIST} allowed")
        for i, v in enumerate(value):
            if isinstance(v, list | dict):
                raise r.fail(f"{name}[{i}]", "is nested; architecture arguments are numbers, names or flat lists")
            _check_number(r, f"{name}[{i}]", v, MAX_KWARG_ITEM)
    elif isinstance(value, dict):
        raise r.fail(name, "is an object; architecture arguments are numbers, names or flat lists")
    else:
        _check_number(r, name, value, MAX_KWARG)


def _check_number(r: Reader, name: str, value: Any, limit: float) -> None:
    if isinstance(value, str) and len(value) > 256:
        raise r.fail(name, "is a string of more than 256 characters")
    if isinstance(value, int | float) and not isinstance(value, bool) and not (
            math.isfinite(value) and abs(value) <= limit):
        raise r.fail(name, f"is {value!r}, beyond the {limit:,} an architecture argument may be")


def build_for_state(path: Any, name: str, kwargs: dict[str, Any], state: dict[str, torch.Tensor],
                    hint: str = "the file is corrupt or was edited") -> torch.nn.Module:
    """Model `name(**kwargs)` with the weights `state` loaded. It is first built on the meta device (no memory):
    a header that asks for more than MAX_PARAMS parameters, or for tensors the file does not hold, is refused
    before anything is allocated, so the memory used is bounded by the file's own size."""
    def build() -> torch.nn.Module:
        try:
            return create_model(name, **kwargs)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 (kwargs come from an untrusted file: any builder error is theirs)
            raise UserError(f"{path}: model '{name}' cannot be built from the header's model_kwargs "
                            f"({type(e).__name__}: {str(e)[:80]}); {hint}") from None

    with torch.device("meta"):
        skeleton = build()
    n = sum(p.numel() for p in skeleton.parameters())
    if n > MAX_PARAMS:
        raise UserError(f"{path}: the header asks for a model of {n:,} parameters, more than the {MAX_PARAMS:,} "
                        f"allowed; {hint}")
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing = [k for k in want if k not in have]
        unexpected = [k for k in have if k not in want]
        wrong = [k for k in want if k in have and want[k] != have[k]]
        raise UserError(f"{path}: weights do not fit model '{name}' ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected, {len(wrong)} of another shape); {hint}")
    model = build()
    model.load_state_dict(state)
    return model


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


def model_from_state(path: Any, state: dict[str, torch.Tensor], header: dict[str, Any], *,
                     kwargs: dict[str, Any] | None = None, matching: str | None = None,
                     hint: str = "the file is corrupt or was edited") -> tuple[torch.nn.Module, dict[str, int] | None]:
    """The model of a read checkpoint (`read_checkpoint`'s state and header).

    Exact (default): the checkpoint's own network, built with `kwargs` (default: the header's model_kwargs), and
    every tensor must fit (`build_for_state`). `matching=NAME`: network NAME built with `kwargs`, taking each
    tensor of `state` that fits (`load_matching`). Returns (model, load_matching's counts or None)."""
    if matching is None:
        return build_for_state(path, header["model"], header.get("model_kwargs", {}) if kwargs is None else kwargs,
                               state, hint=hint), None
    model = create_model(matching, **(kwargs or {}))
    return model, load_matching(model, state)


def load_model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights. Returns (model, header). An exported
    .onnx file gives an OnnxModel (ONNX Runtime on the CPU) with the header the export kept."""
    if Path(path).suffix.lower() == ".onnx":
        model, header = load_onnx_model(path)
        return model.to(map_location), header
    state, header = read_checkpoint(path)
    model, _ = model_from_state(Path(path), state, header)
    return model.to(map_location).eval(), header
