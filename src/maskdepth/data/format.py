"""The dataset folder format, owned here: its constants, file names, metadata.json, the held-out split rule,
shard listing and counting, and reading the stored backgrounds.

Everything that writes a dataset (`data make`, `data import`) or reads one (the loader, the generator, `data
stats` / `data show`, training's data setup, evaluation) goes through this module; the tar shards themselves are
encoded and decoded by data/shards.py. Layout and member names are described in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from maskdepth import __version__
from maskdepth.codecs import decode_depth_png, decode_gray, decode_rgb
from maskdepth.data.shards import count_shard_samples
from maskdepth.errors import UserError
from maskdepth.fileio import MAX_IMAGE_PIXELS, OutputKind, atomic_write_text
from maskdepth.schema import Reader

METADATA = "metadata.json"
TEACHER_CACHE = "teacher-cache"  # default cache folder of teacher results inside the dataset folder
MAKE_LOCK = ".make.lock"  # held by a running `data make`
# what `data make` and `data import` write; a folder holding only the teacher cache is a make stopped early.
# The cache is never removed by --force: its results are keyed by content and never stale.
DATASET_OUTPUT = OutputKind("dataset", markers=(METADATA, TEACHER_CACHE), owned=(
    METADATA, "skipped.json", "import_report.json", MAKE_LOCK, "backgrounds/bg-*.png", "cutouts/fg-*.png",
    "shards/*.tar"))
FORMAT = "maskdepth-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
DEPTH_SCALE = 0.001  # metric depth PNGs in millimetres
RELATIVE_DEPTH_SCALE = 1 / 65535  # relative depth (in (0, 1]) uses the whole 16-bit range

MAX_METADATA_BYTES = 64 << 20
MAX_SIDE = 16384
MAX_SHARDS = 100_000  # per split
MAX_SHARD_SAMPLES = 1_000_000
MAX_SAMPLES = MAX_SHARDS * 1000
MAX_ASSETS = 1_000_000  # backgrounds, cutouts
_FIX = "rebuild the dataset (`maskdepth data make` or `data import`)"
_INCOMPLETE = "the dataset is incomplete: rerun the command that made it"


# ---------------------------------------------------------------------------------------------------- names


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def background_files(root: str | os.PathLike, bg_id: int) -> tuple[Path, Path, Path]:
    """(rgb, depth, floor) paths of background `bg_id`."""
    d = Path(root) / "backgrounds"
    return d / f"bg-{bg_id:05d}.png", d / f"bg-{bg_id:05d}.depth.png", d / f"bg-{bg_id:05d}.floor.png"


def cutout_file(root: str | os.PathLike, fg_id: int) -> Path:
    return Path(root) / "cutouts" / f"fg-{fg_id:05d}.png"


def round_depth_max(max_depth: float) -> float:
    """A tidy upper bound a little above the largest depth seen (models bound their output by it)."""
    return float(math.ceil(max_depth * 1.05))


# ---------------------------------------------------------------------------------------------------- split


def held_out_count(n: int, fraction: float) -> int:
    """How many of `n` groups (backgrounds, or samples) the test split holds: round(fraction * n), at least one
    if fraction > 0, and never all of them."""
    return min(max(round(fraction * n), 1 if fraction > 0 else 0), max(n - 1, 0))


def held_out(groups: Sequence, fraction: float, draw: Callable[[Sequence, int], Sequence]) -> list:
    """The held-out groups, sorted: `draw(groups, k)` makes the seeded choice of k = held_out_count(...) of
    `groups` (sorted); it is not called when k is 0, so a caller's generator is then left untouched."""
    k = held_out_count(len(groups), fraction)
    return sorted(draw(sorted(groups), k)) if k else []


# ---------------------------------------------------------------------------------------------------- metadata


class DatasetMetadata(Mapping[str, Any]):
    """A dataset's metadata.json: the JSON object (read as a mapping) with every value this package uses checked
    for type and range on construction, and typed accessors for them. Build one with `new` (writers), `read` (a
    folder) or the constructor (an object already parsed)."""

    def __init__(self, obj: Any, path: Any = METADATA):
        self._raw: dict[str, Any] = _check(obj, path)
        self.path = path

    # -- building and storing

    @classmethod
    def new(cls, *, generator: str, source: str, size: Sequence[int], depth: Mapping[str, Any],
            counts: Mapping[str, int], split: Mapping[str, Any], shards: Mapping[str, list[str]],
            shard_counts: Mapping[str, list[int]], command: str, **extra: Any) -> DatasetMetadata:
        """The metadata a writer records: the format's stamps and common keys plus the writer's own `extra`."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "generator": {"name": generator, "version": __version__}, "source": source,
                "size": list(size), "depth": dict(depth), "counts": dict(counts), "split": dict(split),
                "shards": dict(shards), "shard_counts": dict(shard_counts), "command": command, **extra}
        return cls(json.loads(json.dumps(meta)))  # as it reads back: tuples become lists

    @classmethod
    def read(cls, root: str | os.PathLike) -> DatasetMetadata:
        root = Path(root)
        p = root / METADATA
        if not root.is_dir():
            raise UserError(f"{root}: dataset folder not found; make one with `maskdepth data make {root}`")
        if not p.is_file():
            raise UserError(f"{p}: missing; {root} is not a maskdepth dataset: make one with `maskdepth data make` "
                            "or `maskdepth data import`")
        try:
            if p.stat().st_size > MAX_METADATA_BYTES:
                raise UserError(f"{p}: {p.stat().st_size:,} bytes, more than a dataset's metadata can be; rebuild "
                                "the dataset")
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise UserError(f"{p}: corrupt metadata ({str(e)[:80]}); rebuild the dataset") from None
        except OSError as e:
            raise UserError(f"{p}: cannot read ({e.strerror or e}); check the file") from None
        return cls(obj, p)

    def write(self, root: str | os.PathLike) -> None:
        atomic_write_text(Path(root) / METADATA, json.dumps(self._raw, indent=2, sort_keys=True) + "\n")

    @property
    def json(self) -> dict[str, Any]:
        """The JSON object itself."""
        return self._raw

    # -- the mapping

    def __getitem__(self, key: str) -> Any:
        return self._raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"DatasetMetadata({self._raw!r})"

    # -- typed values

    @property
    def size(self) -> tuple[int, int]:
        h, w = self._raw["size"]
        return int(h), int(w)

    @property
    def depth_unit(self) -> str:
        return self._raw["depth"]["unit"]

    @property
    def depth_scale(self) -> float:
        """Multiply a depth PNG's uint16 value by this to get depth in `depth_unit`."""
        return float(self._raw["depth"]["scale"])

    @property
    def depth_max(self) -> float:
        """Upper bound of depth in the dataset (models bound their depth head to (0, depth_max))."""
        return float(self._raw["depth"]["max"])

    def num_samples(self, split: str) -> int:
        return int(self._raw["counts"].get(split, 0))

    @property
    def num_backgrounds(self) -> int:
        return int(self._raw["counts"].get("backgrounds", 0))

    def shard_names(self, split: str) -> list[str]:
        return list(self._raw.get("shards", {}).get(split, []))

    def known_shard_counts(self, split: str) -> list[int] | None:
        """Samples per shard of `split` as recorded, or None where the metadata does not record them."""
        known = self._raw.get("shard_counts", {}).get(split)
        return None if known is None else [int(n) for n in known]

    def entries(self, key: str) -> list[dict[str, Any]] | None:
        """The list of `backgrounds` or `cutouts` a made dataset records (None for an imported one)."""
        v = self._raw.get(key)
        return v if isinstance(v, list) else None

    def split_backgrounds(self, split: str) -> list[int]:
        """Background ids of `split` (a made dataset's split is by background)."""
        _check_split(split)
        test = set(self._raw.get("split", {}).get("test_backgrounds", []))
        return [i for i in range(self.num_backgrounds) if (i in test) == (split == "test")]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")


def _check(meta: Any, path: Any) -> dict[str, Any]:
    """`meta` with every value this package uses checked for type and range (UserError naming the key)."""
    r = Reader(path, _FIX)
    meta = r.root(meta)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a maskdepth dataset metadata file (format={str(meta.get('format'))[:40]!r})")
    version = r.int(meta, "format_version", 0, 10 ** 6, default=FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: dataset format {version} is newer than this maskdepth reads "
                        f"({FORMAT_VERSION}); upgrade maskdepth")
    h, w = r.pair(meta, "size", 1, MAX_SIDE)
    if h * w > MAX_IMAGE_PIXELS:
        raise r.fail("size", f"{w}x{h} is larger than the {MAX_IMAGE_PIXELS:,}-pixel limit")
    depth = r.obj(meta, "depth")
    r.str(depth, "unit", "depth.unit", max_len=32)
    r.positive(depth, "scale", 1e6, "depth.scale")
    r.positive(depth, "max", 1e9, "depth.max")
    counts = r.obj(meta, "counts")
    for split in SPLITS:
        r.int(counts, split, 0, MAX_SAMPLES, f"counts.{split}", default=0)
    r.int(counts, "backgrounds", 0, MAX_ASSETS, "counts.backgrounds", default=0)
    shards = r.obj(meta, "shards")
    known = r.obj(meta, "shard_counts", default={})
    for split in SPLITS:
        names = r.list(shards, split, MAX_SHARDS, f"shards.{split}", default=[])
        for i, name in enumerate(names):
            if name != shard_name(split, i):
                raise r.fail(f"shards.{split}[{i}]", f"is {str(name)[:40]!r}, not {shard_name(split, i)}")
        if split in known:
            per = r.list(known, split, MAX_SHARDS, f"shard_counts.{split}")
            for i in range(len(per)):
                r.int(per, i, 0, MAX_SHARD_SAMPLES, f"shard_counts.{split}[{i}]")
            if len(per) == len(names) and sum(per) != counts.get(split, 0):
                raise r.fail(f"shard_counts.{split}", f"adds up to {sum(per):,}, counts.{split} says "
                             f"{counts.get(split, 0):,}")
    for key, field in (("backgrounds", "focal_px"), ("cutouts", "height_m")):
        entries = r.list(meta, key, MAX_ASSETS, default=[])
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise r.fail(f"{key}[{i}]", "is not an object")
            r.positive(e, field, 1e9, f"{key}[{i}].{field}", default=1.0)
    if "cutout_size" in meta:
        r.int(meta, "cutout_size", 1, MAX_SIDE)
    split_info = r.obj(meta, "split", default={})
    tests = r.list(split_info, "test_backgrounds", MAX_ASSETS, "split.test_backgrounds", default=[])
    for i in range(len(tests)):
        r.int(tests, i, 0, MAX_ASSETS, f"split.test_backgrounds[{i}]")
    return meta


# ---------------------------------------------------------------------------------------------------- backgrounds


def read_background_file(path: Path, decode: Callable[[bytes], np.ndarray],
                         size: tuple[int, int] | None = None) -> np.ndarray:
    """One stored background picture (rgb, depth or floor) decoded by `decode`; a missing, unreadable or
    wrongly sized file is one UserError naming it."""
    try:
        arr = decode(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: background file missing; {_INCOMPLETE}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: unreadable background ({e}); rebuild the dataset") from None
    if size is not None and arr.shape[:2] != tuple(size):
        raise UserError(f"{path}: background is {arr.shape[1]}x{arr.shape[0]}, the dataset's size is "
                        f"{size[1]}x{size[0]}; rebuild the dataset")
    return arr


def read_background(root: str | os.PathLike, bg_id: int, depth_scale: float, size: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (H,W,3) uint8, depth (H,W) float32 in the dataset's unit (0 = unknown), floor (H,W) bool) of a stored
    background."""
    rgb_p, depth_p, floor_p = background_files(root, bg_id)
    rgb = read_background_file(rgb_p, decode_rgb, size)
    depth = read_background_file(depth_p, decode_depth_png, size).astype(np.float32) * np.float32(depth_scale)
    floor = read_background_file(floor_p, decode_gray, size) > 127
    return rgb, depth, floor


# ---------------------------------------------------------------------------------------------------- the folder


@dataclass
class DatasetDir:
    """A dataset folder and its checked metadata (`meta`)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.meta = DatasetMetadata.read(self.root)

    @property
    def size(self) -> tuple[int, int]:
        return self.meta.size

    @property
    def depth_unit(self) -> str:
        return self.meta.depth_unit

    @property
    def depth_scale(self) -> float:
        return self.meta.depth_scale

    @property
    def depth_max(self) -> float:
        return self.meta.depth_max

    def shards(self, split: str) -> list[Path]:
        """The shard files of `split`, all of which must exist."""
        _check_split(split)
        paths = [self.root / "shards" / n for n in self.meta.shard_names(split)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: shard missing ({len(missing)} of {len(paths)} in split '{split}'); "
                            f"{_INCOMPLETE}")
        return paths

    def shard_counts(self, split: str) -> list[int]:
        """Samples in each shard of `split`: from the metadata's `shard_counts` if recorded, else from the tar
        headers (data/shards.py's strict reader)."""
        paths = self.shards(split)
        known = self.meta.known_shard_counts(split)
        if known is not None and len(known) == len(paths):
            return known
        return [_count_samples(str(p), *_stamp(p)) for p in paths]

    def num_samples(self, split: str) -> int:
        return self.meta.num_samples(split)

    def background_ids(self) -> list[int]:
        return list(range(self.meta.num_backgrounds))

    @cached_property
    def _bg_cache(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {}

    def background(self, bg_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (H,W,3) uint8, depth (H,W) float32 in depth_unit, 0 = unknown), cached."""
        if bg_id not in self._bg_cache:
            rgb_p, depth_p, _ = background_files(self.root, bg_id)
            rgb = read_background_file(rgb_p, decode_rgb, self.size)
            depth = read_background_file(depth_p, decode_depth_png, self.size).astype(np.float32) * self.depth_scale
            self._bg_cache[bg_id] = (rgb, depth)
        return self._bg_cache[bg_id]


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8192)
def _count_samples(path: str, size: int, mtime_ns: int) -> int:
    """count_shard_samples, cached by (path, size, mtime)."""
    return count_shard_samples(path)
