"""The dataset folder: metadata.json, WebDataset-layout tar shards, backgrounds and cutouts stored once.

Layout and member names are described in docs/ARCHITECTURE.md. Tar files are written byte-reproducibly (no
times, owners or modes from the machine) to a temporary name and renamed when complete, so a shard that exists is
complete and a rerun can skip it.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path, atomic_write_text

METADATA = "metadata.json"
FORMAT = "maskdepth-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
# members of one sample, by extension (the part of the member name after the key)
SAMPLE_MEMBERS = ("fg_bg.jpg", "mask.png", "depth.png", "json")

Sample = dict[str, bytes]  # extension -> bytes, plus nothing else


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def background_files(root: str | os.PathLike, bg_id: int) -> tuple[Path, Path, Path]:
    """(rgb, depth, floor) paths of background `bg_id`."""
    d = Path(root) / "backgrounds"
    return d / f"bg-{bg_id:05d}.png", d / f"bg-{bg_id:05d}.depth.png", d / f"bg-{bg_id:05d}.floor.png"


def cutout_file(root: str | os.PathLike, fg_id: int) -> Path:
    return Path(root) / "cutouts" / f"fg-{fg_id:05d}.png"


def write_shard(path: str | os.PathLike, samples: Iterable[tuple[str, Sample]]) -> int:
    """Write (key, {ext: bytes}) samples as one tar, atomically and reproducibly. Returns the sample count."""
    n = 0
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def iter_shard(path: str | os.PathLike, required: Iterable[str] = SAMPLE_MEMBERS) -> Iterator[tuple[str, Sample]]:
    """Stream (key, {ext: bytes}) samples from a tar shard; members of a sample are consecutive.

    The file is read whole (a shard is tens of MB) and its 512-byte headers parsed directly: about ten times
    faster than tarfile's stream reader, and every header's checksum and the end-of-archive blocks are checked,
    so a file cut anywhere, even between two members, is reported. A truncated file, a file that is not a tar,
    or a sample missing a required member raises UserError naming the shard and what to do.
    """
    path = Path(path)
    required = tuple(required)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: shard not found; the dataset is incomplete: rerun the command that "
                        "made it") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read shard ({e}); check the file") from None

    def broken(why: str) -> UserError:
        return UserError(f"{path}: truncated or not a tar shard ({why}); delete it and rerun the command that "
                         "made the dataset (complete shards are kept)")

    key: str | None = None
    sample: Sample = {}
    long_name: str | None = None
    off, n = 0, len(data)
    while True:
        if off + BLOCK > n:
            raise broken("ends without the end-of-archive blocks")
        header = data[off:off + BLOCK]
        if header == ZERO_BLOCK:
            break
        if _checksum(header) != _octal(header[148:156]):
            raise broken(f"bad header checksum at byte {off}")
        size = _octal(header[124:136])
        kind = header[156:157]
        start = off + BLOCK
        off = start + -(-size // BLOCK) * BLOCK
        if start + size > n:
            raise broken("a member is cut short")
        if kind == b"L":  # GNU long name: the next member's name
            long_name = data[start:start + size].rstrip(b"\0").decode("utf-8", "replace")
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue  # folders, links, pax headers: not sample members
        name = long_name or header[:100].rstrip(b"\0").decode("utf-8", "replace")
        long_name = None
        base = os.path.basename(name)
        k, dot, ext = base.partition(".")
        if not dot:
            raise UserError(f"{path}: member '{name}' has no extension; this is not a maskdepth "
                            "shard: remove it from the dataset's shards/ folder")
        if k != key:
            if key is not None:
                yield _complete(path, key, sample, required)
            key, sample = k, {}
        sample[ext] = data[start:start + size]
    if key is not None:
        yield _complete(path, key, sample, required)


BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def _checksum(header: bytes) -> int:
    # the checksum field itself counts as eight spaces
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _complete(path: Path, key: str, sample: Sample, required: tuple[str, ...]) -> tuple[str, Sample]:
    missing = [e for e in required if e not in sample]
    if missing:
        raise UserError(f"{path}: sample '{key}' lacks {', '.join(missing)}; this is not a maskdepth shard "
                        "(or it is damaged): delete it and rebuild the dataset")
    return key, sample


def write_metadata(root: str | os.PathLike, meta: dict[str, Any]) -> None:
    atomic_write_text(Path(root) / METADATA, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_metadata(root: str | os.PathLike) -> dict[str, Any]:
    root = Path(root)
    p = root / METADATA
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found; make one with `maskdepth data make {root}`")
    if not p.is_file():
        raise UserError(f"{p}: missing; {root} is not a maskdepth dataset: make one with `maskdepth data make` "
                        "or `maskdepth data import`")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: corrupt metadata ({e}); rebuild the dataset") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{p}: not a maskdepth dataset metadata file (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{p}: dataset format {meta['format_version']} is newer than this maskdepth reads "
                        f"({FORMAT_VERSION}); upgrade maskdepth")
    return meta


@dataclass
class DatasetDir:
    """A dataset folder and its metadata. Metadata keys used here:

    size [H, W]; depth {unit, scale, max}; shards {split: [file names]}; counts {...}.
    """

    root: Path

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.meta = read_metadata(self.root)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.meta["size"]
        return int(h), int(w)

    @property
    def depth_unit(self) -> str:
        return self.meta["depth"]["unit"]

    @property
    def depth_scale(self) -> float:
        """Multiply a depth PNG's uint16 value by this to get depth in `depth_unit`."""
        return float(self.meta["depth"]["scale"])

    @property
    def depth_max(self) -> float:
        """Upper bound of depth in the dataset (models bound their depth head to (0, depth_max))."""
        return float(self.meta["depth"]["max"])

    def shards(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        names = self.meta.get("shards", {}).get(split, [])
        paths = [self.root / "shards" / n for n in names]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: shard missing ({len(missing)} of {len(paths)} in split '{split}'); "
                            "the dataset is incomplete: rerun the command that made it")
        return paths

    def num_samples(self, split: str) -> int:
        return int(self.meta["counts"][split])

    def background_ids(self) -> list[int]:
        return list(range(int(self.meta["counts"]["backgrounds"])))

    @cached_property
    def _bg_cache(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {}

    def background(self, bg_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (H,W,3) uint8, depth (H,W) float32 in depth_unit, 0 = unknown), cached."""
        if bg_id not in self._bg_cache:
            from maskdepth.codecs import decode_depth_png, decode_rgb

            rgb_p, depth_p, _ = background_files(self.root, bg_id)
            try:
                rgb = decode_rgb(rgb_p.read_bytes())
                depth = decode_depth_png(depth_p.read_bytes()).astype(np.float32) * self.depth_scale
            except FileNotFoundError as e:
                raise UserError(f"{e.filename}: background file missing; the dataset is incomplete: rerun the "
                                "command that made it") from None
            except OSError as e:
                raise UserError(f"{rgb_p}: unreadable background ({e}); rebuild the dataset") from None
            self._bg_cache[bg_id] = (rgb, depth)
        return self._bg_cache[bg_id]


def round_depth_max(max_depth: float) -> float:
    """A tidy upper bound a little above the largest depth seen (models bound their output by it)."""
    return float(math.ceil(max_depth * 1.05))
