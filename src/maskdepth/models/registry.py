"""Model registry: name -> builder. `create_model` records how a model was built so a checkpoint can rebuild it.

It knows no model: each model module registers its builder with its own aliases and init-only arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from maskdepth.errors import UserError
from maskdepth.models.base import MaskDepthNet


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., MaskDepthNet]
    summary: str
    # builder arguments that only initialise weights (a file path): the checkpoint holds the weights themselves,
    # so they are left out of `model_kwargs` and a rebuild never looks for the file again
    init_only: frozenset[str] = frozenset()


_MODELS: dict[str, ModelEntry] = {}
ALIASES: dict[str, str] = {}  # other names users may type -> the registered name


def register(name: str, summary: str, aliases: tuple[str, ...] = (), init_only: tuple[str, ...] = (),
             ) -> Callable[[Callable[..., MaskDepthNet]], Callable[..., MaskDepthNet]]:
    """Decorator: register `builder` under `name` (and `aliases`). Builders take keyword arguments with JSON-able
    defaults; `init_only` names those that only initialise weights."""

    def wrap(builder: Callable[..., MaskDepthNet]) -> Callable[..., MaskDepthNet]:
        for n in (name, *aliases):
            if n in _MODELS or n in ALIASES:
                raise ValueError(f"model name '{n}' registered twice")
        _MODELS[name] = ModelEntry(name, builder, summary, frozenset(init_only))
        ALIASES.update(dict.fromkeys(aliases, name))
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered model names in registration order (the default model first)."""
    return list(_MODELS)


def model_summary(name: str) -> str:
    return _entry(name).summary


def canonical_name(name: str) -> str:
    """The registered name for `name` or its alias; UserError listing the known names if there is none."""
    return _entry(name).name


def create_model(name: str, **kwargs) -> MaskDepthNet:
    """Build model `name` (or an alias) with `kwargs` overriding its defaults.

    The result keeps `model_name` (the registered name) and `model_kwargs` (every architecture argument, defaults
    filled in, JSON-able), so `create_model(m.model_name, **m.model_kwargs)` builds the same network.
    """
    entry = _entry(name)
    signature = inspect.signature(entry.builder)
    try:
        bound = signature.bind(**kwargs)
    except TypeError as e:
        takes = ", ".join(signature.parameters) or "no arguments"
        raise UserError(f"model '{entry.name}': {e}; it takes: {takes}") from None
    bound.apply_defaults()
    try:
        model = entry.builder(**bound.arguments)
    except (ValueError, TypeError) as e:
        raise UserError(f"model '{entry.name}': {e}") from None
    model.model_name = entry.name
    model.model_kwargs = {k: _jsonable(v) for k, v in bound.arguments.items() if k not in entry.init_only}
    return model


def _entry(name: str) -> ModelEntry:
    entry = _MODELS.get(ALIASES.get(name, name))
    if entry is None:
        known = ", ".join(list(_MODELS) + list(ALIASES))
        raise UserError(f"unknown model '{name}'; known models: {known}")
    return entry


def _jsonable(value):
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
