"""The dataset folder: metadata.json, WebDataset-layout tar shards, backgrounds and cutouts stored once.

Layout and member names are described in docs/ARCHITECTURE.md. Tar files are written byte-reproducibly (no
times, owners or modes from the machine) to a temporary name and renamed when complete, so a shard that exists is
complete and a rerun can skip it.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from maskdepth.errors import UserError
from maskdepth.fileio import OutputKind, atomic_path, atomic_write_text

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

    The file is read whole (a shard is tens of MB) and its 512-byte headers parsed directly (`tar_members`):
    about ten times faster than tarfile's stream reader, and stricter. A truncated file, a file that is not a
    tar, or a sample missing a required member raises UserError naming the shard and what to do.
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
    key: str | None = None
    sample: Sample = {}
    for k, ext, start, size in tar_members(path, data):
        if k != key:
            if key is not None:
                yield _complete(path, key, sample, required)
            key, sample = k, {}
        sample[ext] = data[start:start + size]
    if key is not None:
        yield _complete(path, key, sample, required)


def count_shard_samples(path: str | os.PathLike) -> int:
    """Samples in a shard (distinct consecutive keys), reading only its headers (the file is memory-mapped)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                data: Any = b""
            else:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise UserError(f"{path}: cannot read shard ({e}); check the file") from None
    try:
        n, last = 0, None
        for key, _, _, _ in tar_members(path, data):
            if key != last:
                n, last = n + 1, key
        return n
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# member types: regular file ("0", old "\0", contiguous "7") and the GNU long name of the next member ("L");
# write_shard writes nothing else, so anything else (links, devices, folders, pax headers) is refused
_FILE_TYPES = (b"0", b"\0", b"7")
_LONG_NAME = b"L"
MAX_NAME = 4096  # a GNU long name longer than this is not one of ours


def tar_members(path: Path, data: bytes | mmap.mmap) -> Iterator[tuple[str, str, int, int]]:
    """(key, extension, data offset, size) of each file member of the tar `data`, with every header checked.

    Each header's checksum must match; sizes must be plain octal, not negative and within the file; member types
    other than regular files and GNU long names are refused; the archive must end with its end-of-archive blocks
    and nothing but zeros after them (a shard whose first blocks were zeroed would otherwise read as empty). Every
    member moves the offset forward, so a crafted header can never make the reader loop.
    """

    def broken(why: str) -> UserError:
        return UserError(f"{path}: truncated or not a tar shard ({why}); delete it and rerun the command that "
                         "made the dataset (complete shards are kept)")

    long_name: str | None = None
    off, n = 0, len(data)
    while True:
        if off + BLOCK > n:
            raise broken("ends without the end-of-archive blocks")
        header = data[off:off + BLOCK]
        if header == ZERO_BLOCK:
            if data[off:n].count(0) != n - off:
                raise broken(f"data after the end-of-archive block at byte {off}")
            return
        if _checksum(header) != _octal(header[148:156]):
            raise broken(f"bad header checksum at byte {off}")
        size = _octal(header[124:136])
        kind = header[156:157]
        start = off + BLOCK
        if size < 0:
            raise broken(f"member size field at byte {off + 124} is not a size")
        if start + size > n:
            raise broken(f"a member at byte {off} is cut short or claims {size:,} bytes")
        off = start + -(-size // BLOCK) * BLOCK  # always > the previous offset
        if kind == _LONG_NAME:
            if size > MAX_NAME:
                raise broken(f"a long member name of {size:,} bytes at byte {start - BLOCK}")
            long_name = bytes(data[start:start + size]).rstrip(b"\0").decode("utf-8", "replace")
            continue
        if kind not in _FILE_TYPES:
            raise UserError(f"{path}: member of tar type {kind!r} at byte {start - BLOCK}; a maskdepth shard holds "
                            "only regular files: delete the shard and rerun the command that made the dataset")
        name = long_name or bytes(header[:100]).rstrip(b"\0").decode("utf-8", "replace")
        long_name = None
        k, dot, ext = os.path.basename(name).partition(".")
        if not dot:
            raise UserError(f"{path}: member '{name}' has no extension; this is not a maskdepth "
                            "shard: remove it from the dataset's shards/ folder")
        yield k, ext, start, size


def _octal(field: bytes) -> int:
    """A tar number field: octal digits padded with NUL or space; anything else (signs, base-256) is -1."""
    text = bytes(field).rstrip(b"\0 ").strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        return -1
    return int(text, 8)


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
        if p.stat().st_size > MAX_METADATA_BYTES:
            raise UserError(f"{p}: {p.stat().st_size:,} bytes, more than a dataset's metadata can be; rebuild the "
                            "dataset")
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{p}: corrupt metadata ({str(e)[:80]}); rebuild the dataset") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror or e}); check the file") from None
    return check_metadata(meta, p)


MAX_METADATA_BYTES = 64 << 20
MAX_SIDE = 16384
MAX_SHARDS = 100_000  # per split
MAX_SHARD_SAMPLES = 1_000_000
MAX_SAMPLES = MAX_SHARDS * 1000
MAX_ASSETS = 1_000_000  # backgrounds, cutouts


def check_metadata(meta: Any, path: Any = METADATA) -> dict[str, Any]:
    """`meta` with every value this package uses checked for type and range (UserError naming the key)."""
    from maskdepth.fileio import MAX_IMAGE_PIXELS
    from maskdepth.schema import Reader

    r = Reader(path, "rebuild the dataset (`maskdepth data make` or `data import`)")
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
        return int(self.meta["counts"].get(split, 0))

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
            except (OSError, ValueError, SyntaxError) as e:
                raise UserError(f"{rgb_p}: unreadable background ({e}); rebuild the dataset") from None
            if rgb.shape[:2] != self.size or depth.shape != self.size:
                raise UserError(f"{rgb_p}: background is not the dataset's {self.size[1]}x{self.size[0]}; rebuild "
                                "the dataset")
            self._bg_cache[bg_id] = (rgb, depth)
        return self._bg_cache[bg_id]


def round_depth_max(max_depth: float) -> float:
    """A tidy upper bound a little above the largest depth seen (models bound their output by it)."""
    return float(math.ceil(max_depth * 1.05))
