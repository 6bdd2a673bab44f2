"""Planning for `maskdepth data make`: the `MakeConfig`, the held-out backgrounds, and the `ShardPlan` saying which
(background, cutout, flip) triples each shard holds (a pure function of the config); see data/make.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskdepth.data.banks import (
    NOMINAL_HORIZON,
    STREAM_ORDER,
    STREAM_SPLIT,
    seed_for,
)
from maskdepth.data.compose import ComposeConfig
from maskdepth.data.cutouts import KINDS
from maskdepth.data.format import (
    DEPTH_SCALE,
    SPLITS,
    held_out,
    shard_name,
)
from maskdepth.data.teacher import format_flag
from maskdepth.errors import UserError

TEACHER_MODES = ("per-background", "per-composite")
JPEG_QUALITY = 92
PRESETS: dict[str, dict[str, Any]] = {
    # the seeds' scale: 100 backgrounds x 100 cutouts x 2 flips x 20 placements = 400,000 samples at 192x192
    "seed": {"backgrounds": 100, "foregrounds": 100, "per_pair": 20, "size": (192, 192)},
}


@dataclass(frozen=True)
class MakeConfig:
    """Everything that decides a dataset's content. `foregrounds` counts cutouts (each also drawn mirrored)."""

    size: tuple[int, int] = (192, 192)
    backgrounds: int = 20
    foregrounds: int = 20
    per_pair: int = 20
    seed: int = 0
    shard_size: int = 1000
    test_fraction: float = 0.1
    bg_dir: str | None = None  # the user's background photos instead of procedural rooms
    fg_dir: str | None = None  # the user's RGBA cutouts instead of procedural ones
    fg_kinds: tuple[str, ...] | None = None  # procedural cutouts: the cutouts.KINDS drawn from (None: all)
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    fit: str = "crop"  # photos: "crop" or "letterbox" to the size (data/photos.py)
    horizon: float = NOMINAL_HORIZON  # photos: the floor lies below this fraction of the height
    teacher: str | None = None  # depth teacher model for the photos (data/teacher.py)
    teacher_mode: str = "per-background"  # or "per-composite": the teacher sees every composite
    teacher_settings: dict[str, Any] = field(default_factory=dict)  # TeacherSettings fields set by flags

    def check(self) -> None:
        h, w = self.size
        if not (16 <= h <= 4096 and 16 <= w <= 4096):
            raise UserError(f"--size {h}x{w}: each side must be between 16 and 4096 pixels")
        for name in ("backgrounds", "foregrounds", "per_pair", "shard_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if not 0 <= self.test_fraction < 1:
            raise UserError(f"--test-fraction {self.test_fraction}: must be in [0, 1)")
        unknown = sorted(set(self.fg_kinds or ()) - set(KINDS))
        if unknown or self.fg_kinds == ():
            raise UserError(f"--fg-kinds {','.join(self.fg_kinds or ())}: give one or more of "
                            f"{', '.join(KINDS)}")
        if not 0 <= self.horizon < 0.9:
            raise UserError(f"--horizon {self.horizon}: give the fraction of the height where the floor starts, "
                            "in [0, 0.9)")
        if self.teacher and not self.bg_dir:
            raise UserError("--depth-teacher gives depth to your photos (--bg-dir); procedural rooms have exact "
                            "depth already")
        if self.teacher_mode not in TEACHER_MODES:
            raise UserError(f"--teacher-mode {self.teacher_mode}: use one of {', '.join(TEACHER_MODES)}")


def command_line(cfg: MakeConfig) -> str:
    """The command that rebuilds exactly this dataset (into any OUT, with any --workers or --shards)."""
    h, w = cfg.size
    parts = ["maskdepth data make OUT", f"--size {h}x{w}"]
    parts += [f"--bg-dir {cfg.bg_dir}"] if cfg.bg_dir else [f"--backgrounds {cfg.backgrounds}"]
    parts += [f"--fg-dir {cfg.fg_dir}"] if cfg.fg_dir else [f"--foregrounds {cfg.foregrounds}"]
    if cfg.fg_kinds and not cfg.fg_dir:
        parts += [f"--fg-kinds {','.join(cfg.fg_kinds)}"]
    parts += [f"--per-pair {cfg.per_pair}", f"--seed {cfg.seed}", f"--shard-size {cfg.shard_size}",
              f"--test-fraction {cfg.test_fraction}"]
    if cfg.bg_dir:
        parts += [f"--fit {cfg.fit}", f"--horizon {cfg.horizon}"]
    default = ComposeConfig()
    if (cfg.compose.min_height, cfg.compose.max_height) != (default.min_height, default.max_height):
        parts += [f"--fg-scale {cfg.compose.min_height}:{cfg.compose.max_height}"]
    if cfg.compose.is_plain:
        parts += ["--plain"]
    if cfg.teacher:
        parts += [f"--depth-teacher {cfg.teacher}", f"--teacher-mode {cfg.teacher_mode}"]
        parts += [format_flag(k, v) for k, v in sorted(cfg.teacher_settings.items())]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# the plan: which samples each shard holds


@dataclass(frozen=True)
class ShardPlan:
    """What the workers need to build any shard (small and picklable)."""

    root: str
    cfg: MakeConfig
    n_cutouts: int
    split_backgrounds: dict[str, tuple[int, ...]]  # split -> background ids
    digest: str = ""  # of the metadata: a worker's banks are reused only for the same dataset
    depth_scale: float = DEPTH_SCALE  # of the depth PNGs
    depth_max: float = 0.0  # the dataset's depth bound (teacher depth of composites is clipped to it)
    teacher_cache: str | None = None  # per-composite mode: where workers cache teacher results
    teacher_device: str = "cpu"

    def split_samples(self, split: str) -> int:
        return len(self.split_backgrounds[split]) * self.n_cutouts * 2 * self.cfg.per_pair

    def split_shards(self, split: str) -> int:
        return math.ceil(self.split_samples(split) / self.cfg.shard_size)

    @property
    def total_shards(self) -> int:
        return sum(self.split_shards(s) for s in SPLITS)

    def locate(self, index: int) -> tuple[str, int]:
        """Global shard index -> (split, index within the split). Train shards come first."""
        for split in SPLITS:
            n = self.split_shards(split)
            if index < n:
                return split, index
            index -= n
        raise IndexError(index)

    def shard_path(self, index: int) -> Path:
        split, j = self.locate(index)
        return Path(self.root) / "shards" / shard_name(split, j)

    def shard_count(self, split: str, j: int) -> int:
        return min(self.cfg.shard_size, self.split_samples(split) - j * self.cfg.shard_size)

    def triples(self, split: str, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sample number in the split, background id, cutout id, flip) of shard j's samples."""
        per_pair, n_cut = self.cfg.per_pair, self.n_cutouts
        order = _split_order(self.cfg.seed, SPLITS.index(split), self.split_samples(split))
        k = np.arange(j * self.cfg.shard_size, j * self.cfg.shard_size + self.shard_count(split, j))
        pair = order[k] // per_pair
        bgs = np.asarray(self.split_backgrounds[split], dtype=np.int64)
        return k, bgs[pair // (2 * n_cut)], (pair % (2 * n_cut)) // 2, pair % 2


_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _split_order(seed: int, split_code: int, n: int) -> np.ndarray:
    key = (seed, split_code, n)
    if key not in _ORDER_CACHE:
        _ORDER_CACHE[key] = np.random.default_rng(seed_for(seed, STREAM_ORDER, split_code)).permutation(n)
    return _ORDER_CACHE[key]


def held_out_backgrounds(seed: int, n_backgrounds: int, fraction: float) -> list[int]:
    """The held-out backgrounds: the format's rule (`format.held_out`), drawn with numpy from (seed, split)."""
    rng = np.random.default_rng(seed_for(seed, STREAM_SPLIT))
    return held_out(range(n_backgrounds), fraction,
                    lambda groups, k: [int(groups[i]) for i in rng.choice(len(groups), size=k, replace=False)])


def parse_shards(text: str | None, total: int) -> range:
    """'a:b' (either end may be left out) -> range of global shard indices within [0, total)."""
    if text is None:
        return range(total)
    a, sep, b = text.partition(":")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else total
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi <= total:
        raise UserError(f"--shards {text}: give a range a:b with 0 <= a < b <= {total} (this dataset has {total} "
                        "shards)")
    return range(lo, hi)
