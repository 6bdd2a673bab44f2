"""Training configuration: dataclasses read from a TOML file, with `section.key=value` overrides.

One section per dataclass; the field names are the TOML keys. `load_config` reads a file (or nothing: all
defaults), applies overrides and validates; `to_toml` writes the resolved config so that
`maskdepth train --config RUN/config.toml` repeats the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from maskdepth.data.augment import AugmentConfig
from maskdepth.data.capture import CaptureConfig
from maskdepth.data.compose import ComposeConfig
from maskdepth.errors import UserError
from maskdepth.losses import LossWeights
from maskdepth.metrics import METRIC_NAMES

# Where training batches come from ([data] train_source).
TRAIN_SOURCES = {
    "shards": "the samples of dataset `dir` (split train_split) as `data make` / `data import` stored them",
    "procedural": "generated on the fly from gen_backgrounds procedural rooms and gen_cutouts cutouts",
    "composed": "generated on the fly from the backgrounds (split train_split) and the cutouts of dataset `dir`",
}
# Where evaluation batches come from ([data] eval_source); "auto" is resolved when the config is built.
EVAL_SOURCES = {
    "split": "split eval_split of dataset `dir`",
    "held-out": "gen_eval_batches batches of the train source's generator, drawn once with another seed",
    "none": "no evaluation",
}
COMPOSE_SHARES = ("camo_patch", "camo_luma")  # [compose] probabilities whose names do not end in _prob
# The spelling of configs and run folders before train_source: [data] generator (and --generator) -> train_source.
GENERATOR_TO_TRAIN_SOURCE = {"": "shards", "procedural": "procedural", "dataset": "composed"}


@dataclass
class DataConfig:
    """Where batches come from: `train_source` and `eval_source` (TRAIN_SOURCES, EVAL_SOURCES) and their settings."""

    train_source: str = "shards"  # "shards", "procedural" or "composed" (TRAIN_SOURCES)
    # "split", "held-out" or "none" (EVAL_SOURCES); "auto": none without eval_split, else split with a `dir`,
    # else held-out
    eval_source: str = "auto"
    dir: str = ""               # dataset folder (maskdepth data make / import)
    size: int = 64              # training and evaluation side in pixels (square)
    train_split: str = "train"
    eval_split: str = "test"
    eval_samples: int = 0       # evaluate on the first (about) this many samples (0 = the whole split)
    workers: int = 2            # loader worker processes per rank
    augment: bool = True        # joint augmentation of training batches ([augment] section)
    capture: bool = True        # background-capture realism on the bg input ([capture] section)
    gen_backgrounds: int = 64   # train source "procedural": number of procedural backgrounds and cutouts
    gen_cutouts: int = 128
    gen_eval_batches: int = 8   # eval source "held-out": number of batches

    def __post_init__(self) -> None:
        if self.train_source not in TRAIN_SOURCES:
            raise UserError(f"[data] train_source = {self.train_source!r}: use {_choices(TRAIN_SOURCES)}")
        if not self.dir and self.train_source != "procedural":
            raise UserError("no training data: give a dataset folder (--data DIR) or use the on-the-fly "
                            "generator (--generator procedural)")
        if self.eval_source == "auto":
            self.eval_source = "none" if not self.eval_split else "split" if self.dir else "held-out"
        if self.eval_source not in EVAL_SOURCES:
            raise UserError(f"[data] eval_source = {self.eval_source!r}: use {_choices(EVAL_SOURCES)} or \"auto\"")
        if self.eval_source == "split" and not (self.dir and self.eval_split):
            raise UserError("[data] eval_source = \"split\" needs a dataset folder (--data DIR) and an eval_split; "
                            "or use eval_source = \"held-out\" or \"none\"")
        if self.eval_source == "held-out" and self.train_source == "shards":
            raise UserError("[data] eval_source = \"held-out\" draws from the on-the-fly generator, which train_source "
                            "= \"shards\" has not; use eval_source = \"split\" or \"none\"")
        _positive("data", "size", self.size)
        _non_negative("data", "workers", self.workers)
        _non_negative("data", "eval_samples", self.eval_samples)


def data_from_old_spelling(table: dict[str, Any]) -> dict[str, Any]:
    """A [data] table with the earlier key `generator` (configs, run folders and --generator before train_source)
    as train_source. Given beside train_source (a --generator flag over a config file), `generator` wins."""
    if "generator" not in table:
        return table
    table = dict(table)
    generator = table.pop("generator")
    if not isinstance(generator, str) or generator not in GENERATOR_TO_TRAIN_SOURCE:
        raise UserError(f"[data] generator = {generator!r}: use \"\" (read shards), \"procedural\" or \"dataset\"")
    table["train_source"] = GENERATOR_TO_TRAIN_SOURCE[generator]
    return table


def _choices(names: dict[str, str]) -> str:
    return ", ".join(f"\"{n}\"" for n in names)


@dataclass
class ModelConfig:
    name: str = "maskdepth"
    init: str = ""              # "" = random init; "default" = the packaged weights; else a checkpoint path
    # "exact": init's own network and weights (model.name ignored); "matching": network model.name, taking every
    # tensor of init whose name fits (an input conv that gained channels keeps the old ones, the new start at 0)
    init_mode: str = "exact"
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder arguments (depth_max comes from the data)

    def __post_init__(self) -> None:
        if self.init_mode not in ("exact", "matching"):
            raise UserError(f"[model] init_mode = {self.init_mode!r}: use \"exact\" or \"matching\"")


@dataclass
class OptimConfig:
    name: str = "adamw"         # "adamw" or "sgd" (the seeds')
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9       # sgd
    nesterov: bool = False      # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    clip_grad_norm: float = 1.0  # 0 = no clipping

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise UserError(f"[optim] name = {self.name!r}: use \"adamw\" or \"sgd\"")
        _positive("optim", "lr", self.lr)
        _non_negative("optim", "weight_decay", self.weight_decay)
        _non_negative("optim", "clip_grad_norm", self.clip_grad_norm)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over optimizer steps.

    constant; step (lr * gamma every `step_epochs` epochs, the seeds' StepLR); onecycle (torch's OneCycleLR,
    peak = optim.lr); cosine (linear warm-up over `warmup_steps`, then cosine down to lr * min_lr_ratio).
    """

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    step_epochs: int = 1
    gamma: float = 0.5
    pct_start: float = 0.25     # onecycle: share of steps spent rising

    def __post_init__(self) -> None:
        if self.name not in ("constant", "step", "onecycle", "cosine"):
            raise UserError(f"[schedule] name = {self.name!r}: use constant, step, onecycle or cosine")
        _non_negative("schedule", "warmup_steps", self.warmup_steps)
        _positive("schedule", "step_epochs", self.step_epochs)
        if not 0.0 < self.pct_start < 1.0:
            raise UserError(f"[schedule] pct_start = {self.pct_start!r}: give a number between 0 and 1")


@dataclass
class TrainConfig:
    """How long, how big, where, and the loop's bookkeeping."""

    epochs: int = 10
    steps: int = 0              # > 0: train this many steps instead (the last epoch may end early)
    epoch_steps: int = 0        # steps per epoch: required with the generator; a cap for datasets (0 = a pass)
    batch_size: int = 16        # global batch: split evenly over the ranks
    # progressive resizing: [[size, epochs], ...] or [[size, epochs, batch_size], ...]; the last stage runs
    # to the end. Empty: data.size throughout.
    resize: list[list[int]] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"        # "auto" (cuda if there is one), "cpu", "cuda", "cuda:1"
    amp: bool = True            # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False       # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-exact resume on the CPU, near on CUDA
    sync_bn: bool = True        # SyncBatchNorm under multi-GPU DDP (CPU DDP keeps per-rank statistics)
    freeze_bn: bool = False     # BatchNorm statistics stay fixed (fine-tuning with small batches)
    max_bad_steps: int = 5      # stop after this many non-finite losses / gradients in a row
    log_every: int = 20         # steps between train lines in metrics.jsonl / TensorBoard
    eval_every: int = 0         # steps between evaluations (0 = at each epoch's end)
    checkpoint_every: int = 0   # steps between last checkpoints + resumable state (0 = at each epoch's end)
    best_metric: str = "loss"   # "loss" (eval loss) or a metric name; picks best.safetensors
    samples: int = 8            # images in the per-epoch sample grid
    time_budget_s: float = 0.0  # > 0: end gracefully (with checkpoints) after this much wall-clock time
    # the run's checkpoints ask predict to run at the input's own size by default (set it where the run trains
    # across working sizes and its mask and depth were shown to hold across them)
    predict_native: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_bad_steps", "log_every"):
            _positive("train", name, getattr(self, name))
        for name in ("steps", "epoch_steps", "eval_every", "checkpoint_every", "samples", "time_budget_s"):
            _non_negative("train", name, getattr(self, name))
        if self.best_metric != "loss" and self.best_metric not in METRIC_NAMES:
            raise UserError(f"[train] best_metric = {self.best_metric!r}: use \"loss\" or a metric name "
                            f"({', '.join(METRIC_NAMES)})")
        for stage in self.resize:
            if not (isinstance(stage, list) and len(stage) in (2, 3) and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in stage)):
                raise UserError(f"[train] resize entry {stage!r}: give [size, epochs] or [size, epochs, "
                                "batch_size] with positive integers, e.g. resize = [[64, 3], [112, 3], [192, 2]]")


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    augment: dict[str, Any] = field(default_factory=dict)  # maskdepth.data.augment.AugmentConfig fields
    capture: dict[str, Any] = field(default_factory=dict)  # maskdepth.data.capture.CaptureConfig fields
    # maskdepth.data.compose.ComposeConfig fields: how the on-the-fly generator composes (shadows, camouflage...)
    compose: dict[str, Any] = field(default_factory=dict)


SECTIONS = {f.name: f for f in fields(Config)}
SHIPPED_CONFIGS = resources.files("maskdepth") / "configs"


def _positive(section: str, key: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise UserError(f"[{section}] {key} = {value!r}: give a number > 0")


def _non_negative(section: str, key: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise UserError(f"[{section}] {key} = {value!r}: give a number >= 0")


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (maskdepth/configs/NAME.toml), for `--config NAME`."""
    return sorted(p.name[: -len(".toml")] for p in SHIPPED_CONFIGS.iterdir() if p.name.endswith(".toml"))


def find_config(name: str | os.PathLike) -> Path:
    """A config file: `name` itself when it is a file, else the shipped config of that name ("cpu-quick",
    "cpu-quick.toml", or the repository's former "configs/cpu-quick.toml")."""
    p = Path(name)
    if p.is_file():
        return p
    stem = p.name[: -len(".toml")] if p.name.endswith(".toml") else p.name
    if p.parent in (Path("."), Path("configs")) and stem in shipped_configs():
        return Path(str(SHIPPED_CONFIGS / f"{stem}.toml"))
    raise UserError(f"{p}: no such config file and no shipped config of that name; give a TOML file or one of "
                    f"{', '.join(shipped_configs())}")


def parse_set(item: str) -> tuple[str, str, Any]:
    """"section.key=value" -> (section, key, value); value is read as TOML (so 3, 1e-3, true, [[64, 2]] work)
    and taken as a plain string when it is not valid TOML (so --set data.dir=/some/path works)."""
    name, eq, raw = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not (eq and dot and section and key):
        raise UserError(f"--set {item!r}: write section.key=value, e.g. --set optim.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key.strip(), value


def _read_toml(path: str | os.PathLike, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The sections of config `path`, on top of those of its `base` (a config it names by file, relative to its
    own folder, or by shipped name): each key it gives replaces the base's, the rest are the base's."""
    beside = seen[-1].parent / path if seen else None  # a base named by a config: first beside that config
    p = beside if beside is not None and beside.is_file() else find_config(path)
    if p.resolve() in seen:
        raise UserError(f"{p}: its base configs lead back to itself; remove one `base =` line of the cycle")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid TOML ({e}); fix the file") from None
    base = raw.pop("base", None)
    for section, table in raw.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise UserError(f"{p}: unknown section [{section}]; sections are {', '.join(SECTIONS)} (and a "
                            "top-level base = \"CONFIG\")")
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"{p}: base = {base!r}: give the config this one builds on, as a file or shipped name")
    merged = _read_toml(base, (*seen, p.resolve()))
    for section, table in raw.items():
        merged[section] = {**merged.get(section, {}), **table}
    return merged


def load_config(path: str | os.PathLike | None = None, sets: list[str] | tuple[str, ...] = (),
                overrides: dict[str, Any] | None = None) -> Config:
    """Read TOML `path` (None: defaults) on top of the configs it names as `base`, then apply `sets`
    ("section.key=value") and `overrides` ({"section.key": value}, the CLI's short flags), then validate. Bad keys
    or values raise UserError."""
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    changes = [parse_set(s) for s in sets]
    changes += [(*name.split(".", 1), value) for name, value in (overrides or {}).items()]
    for section, key, value in changes:
        if section not in SECTIONS:
            raise UserError(f"--set {section}.{key}: unknown section '{section}'; sections are "
                            f"{', '.join(SECTIONS)}")
        raw.setdefault(section, {})[key] = value
    return from_dict(raw, source=str(path) if path else "config")


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a Config from nested dicts (the TOML structure)."""
    built: dict[str, Any] = {}
    for name, f in SECTIONS.items():
        table = dict(raw.get(name, {}))
        if name == "data":
            table = data_from_old_spelling(table)
        cls = _section_class(f)
        known = {x.name: x for x in fields(cls)}
        hints = typing.get_type_hints(cls)
        for key in table:
            if key not in known:
                raise UserError(f"{source}: unknown key [{name}] {key}; known keys: {', '.join(known)}")
        for key, value in table.items():
            table[key] = _coerce(name, key, value, known[key], hints[key])
        try:
            built[name] = cls(**table)
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: [{name}] {e}") from None
        if name in ("capture", "compose"):
            for key, value in table.items():
                if (key.endswith(("_p", "_prob")) or key in COMPOSE_SHARES) and not 0 <= value <= 1:
                    raise UserError(f"{source}: [{name}] {key} = {value!r}: give a probability from 0 to 1")
        if name in ("augment", "capture", "compose"):  # kept as plain tables, defaults filled in, tuples as lists
            built[name] = json.loads(json.dumps(dataclasses.asdict(built[name])))
    default_compose = json.loads(json.dumps(dataclasses.asdict(ComposeConfig())))
    if built["compose"] != default_compose and built["data"].train_source == "shards":  # run folders write all
        raise UserError(f"{source}: [compose] sets how the on-the-fly generator composes, but data.train_source is "
                        "\"shards\" (composed already); remove [compose] or use the generator")
    return Config(**built)


def _section_class(f: dataclasses.Field) -> type:
    return {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
            "train": TrainConfig, "loss": LossWeights, "augment": AugmentConfig, "capture": CaptureConfig,
            "compose": ComposeConfig}[f.name]


def _coerce(section: str, key: str, value: Any, f: dataclasses.Field, hint: Any) -> Any:
    """Check a value against the field's type element by element (lists, fixed tuples, dict values, unions with
    None); ints are accepted where a number is expected and a top-level float field gets a float."""
    if not _fits(value, hint):
        raise UserError(f"[{section}] {key} = {value!r}: expected {_describe(hint)}")
    return float(value) if hint is float else value


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` (as TOML gives it: lists, tables, scalars) is of type `hint`, down to every element."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin in (list, tuple):  # TOML arrays are lists; a tuple field is a list of fixed length
        if not isinstance(value, list):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return all(_fits(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(_fits(v, args[1]) for v in value.values()))
    raise TypeError(f"config field type {hint!r} has no check")  # a new field type: teach _fits about it


_NOUNS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), Any: ("any value", "values"), type(None): ("none", "nones")}


def _describe(hint: Any, plural: bool = False) -> str:
    """What `hint` means in TOML words: list[list[int]] -> 'a list of lists of integers'."""
    if hint in _NOUNS:
        return _NOUNS[hint][plural]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        same = len(set(args)) == 1
        inner = f"{len(args)} {_describe(args[0], True)}" if same else ", ".join(_describe(a) for a in args)
        return f"{'lists' if plural else 'a list'} of {inner}"
    if origin in (list, tuple):
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], True)}"
    return "tables" if plural else "a table"


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_toml(config: Config) -> str:
    """The config as TOML that `load_config` reads back to an equal Config."""
    lines = ["# maskdepth training config (resolved): maskdepth train --config THIS_FILE"]
    for section, table in to_dict(config).items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # Python's repr of int/float (incl. inf, nan) is valid TOML
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
