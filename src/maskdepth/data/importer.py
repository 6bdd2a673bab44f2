"""`maskdepth data import`: seed-layout folders or zips of bg / fg_bg / mask / depth pictures -> a dataset folder.

A seed layout keeps each kind of picture in its own folder (bg/, fg_bg/, mask/, depth/, or names like
"Backgrounds", "masks", "DepthImage"; sub-folders inside them are fine) or, in one flat folder, names that start
with fg_bg / mask / depth / bg. A mask or depth file belongs to the fg_bg file with the same name, maybe with a
prefix or suffix such as mask_ / _depth; a sample's bg is the one whose name starts the fg_bg name (bg_12 ->
fg_bg_12_5 or bg_12_fg_3), or whose name is a token of it, or the only bg there is. A CSV manifest (columns bg,
fg_bg, mask, depth, paths relative to SRC) names the files instead.

Depth in 8-bit files is "relative": value/255, stored as 16-bit with scale 1/65535 (so 0 stays 'unknown').
16-bit depth is relative too unless --depth-unit metres --depth-scale S says what one step is. Every file is
decoded before it is accepted; what cannot be read, matched or fitted is skipped and listed in the printed
summary and in OUT/import_report.json: one bad file never stops the import.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from maskdepth.codecs import encode_depth_png, encode_jpeg, encode_png
from maskdepth.data.format import (
    DATASET_OUTPUT,
    RELATIVE_DEPTH_SCALE,
    DatasetMetadata,
    background_files,
    held_out,
    round_depth_max,
    shard_name,
)
from maskdepth.data.shards import write_shard
from maskdepth.errors import UserError
from maskdepth.fileio import (
    MAX_IMAGE_PIXELS,
    atomic_write_bytes,
    atomic_write_text,
    prepare_output_dir,
    require_file,
)
from maskdepth.progress import Progress

REPORT = "import_report.json"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
ROLES = ("bg", "fg_bg", "mask", "depth")
DEPTH_UNITS = ("relative", "metres")

# folder names (lower case, letters and digits only) that say which kind of picture a folder holds
_FOLDERS = {
    "bg": {"bg", "bgs", "background", "backgrounds", "bgimages", "backgroundimages"},
    "fg_bg": {"fgbg", "fgbgs", "bgfg", "bgfgs", "fgbgimages", "bgfgimages", "overlay", "overlays", "overlayed",
              "composite", "composites", "images"},
    "mask": {"mask", "masks", "fgbgmask", "fgbgmasks", "bgfgmask", "bgfgmasks", "maskimages", "alpha"},
    "depth": {"depth", "depths", "depthmap", "depthmaps", "depthimage", "depthimages", "fgbgdepth",
              "bgfgdepth", "depthmask"},
}
# prefixes and suffixes of file names that only say the kind of picture (stripped before matching names)
_PREFIXES = {
    "fg_bg": ("fg_bg", "fg-bg", "fgbg", "bg_fg", "bgfg", "overlay", "image", "img"),
    "mask": ("fg_bg_mask", "fgbg_mask", "bg_fg_mask", "masks", "mask", "alpha"),
    "depth": ("fg_bg_depth", "fgbg_depth", "bg_fg_depth", "depthmap", "depth_map", "depths", "depth"),
    "bg": ("background", "bg"),
}
_SUFFIXES = {"fg_bg": ("fg_bg", "fgbg", "overlay"), "mask": ("mask", "alpha"),
             "depth": ("depthmap", "depth"), "bg": ("bg",)}
# in a flat folder the name's start says the kind (fg_bg first: those names also start with "fg" then "bg")
_FLAT = (("fg_bg", ("fg_bg", "fg-bg", "fgbg", "bg_fg", "bgfg")), ("mask", ("mask",)), ("depth", ("depth",)),
         ("bg", ("bg", "background")))
_SEP = "_-. "


# ---------------------------------------------------------------------------------------------------- sources


# One picture file is read whole; a larger one (a zip bomb, a stray video) is skipped before reading.
MAX_MEMBER_BYTES = 128 << 20


class Source:
    """A folder or a zip file, seen as relative posix file names and their bytes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise UserError(f"{self.path}: not found; give a folder or a .zip of seed-layout pictures")
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise UserError(f"{self.path}: is neither a folder nor a zip file; give a folder or a .zip")

    def __getstate__(self) -> dict:  # worker processes open their own zip handle
        return {**self.__dict__, "_zip": None}

    def names(self) -> list[str]:
        if self.is_zip:
            names = [i.filename for i in self.zip.infolist() if not i.is_dir()]
        else:
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        return sorted(n for n in names if not any(part.startswith((".", "__MACOSX")) for part in n.split("/")))

    @property
    def zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
                raise UserError(f"{self.path}: damaged zip file ({e}); copy it again or unpack it and import the "
                                "folder") from None
        return self._zip

    def read(self, name: str) -> bytes:
        """Bytes of a member; raises OSError / zipfile errors for what cannot be read, ValueError for a member
        (or file) larger than MAX_MEMBER_BYTES, checked before reading (a zip member's size is bounded by what its
        entry says: zipfile stops there)."""
        if self.is_zip:
            try:
                info = self.zip.getinfo(name)
            except KeyError:
                raise FileNotFoundError(f"no such file in {self.path.name}") from None
            size = info.file_size
        else:
            size = (self.path / name).stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise ValueError(f"{size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit for one picture")
        return self.zip.read(info) if self.is_zip else (self.path / name).read_bytes()

    def label(self, name: str) -> str:
        return f"{self.path}:{name}" if self.is_zip else str(self.path / name)


# ---------------------------------------------------------------------------------------------------- matching


@dataclass
class Item:
    """One sample's files (names inside the source)."""

    fg_bg: str
    mask: str
    depth: str
    bg: str


@dataclass
class _File:
    name: str
    sub: str    # folder inside the role's folder
    stem: str   # lower case
    key: str    # stem without role prefixes/suffixes


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _strip(stem: str, role: str) -> str:
    k = stem
    for p in _PREFIXES[role]:
        if k.startswith(p) and len(k.lstrip(_SEP)) > len(p):
            k = k[len(p):].lstrip(_SEP)
            break
    for s in _SUFFIXES[role]:
        if k.endswith(s) and len(k) > len(s):
            k = k[:-len(s)].rstrip(_SEP)
            break
    return k


def _role(name: str) -> tuple[str, str] | None:
    """(role, sub-folder inside the role folder) of a file, from its folders or else its name's prefix."""
    parts = name.split("/")
    if PurePosixPath(name).suffix.lower() not in IMAGE_EXTS:
        return None
    for i, d in enumerate(parts[:-1]):
        for role, names in _FOLDERS.items():
            if _norm(d) in names:
                return role, "/".join(parts[i + 1:-1])
    stem = PurePosixPath(name).stem.lower()
    for role, prefixes in _FLAT:
        if stem.startswith(prefixes):
            return role, "/".join(parts[:-1])
    return None


def _boundary(s: str, i: int) -> bool:
    """True if s[:i] ends at a token boundary: end, separator, or a letter/digit change."""
    return i == len(s) or not s[i].isalnum() or not s[i - 1].isalnum() or s[i - 1].isdigit() != s[i].isdigit()


def _tokens(s: str) -> list[str]:
    return re.findall(r"[a-z]+|[0-9]+", s)


class _BgIndex:
    """Finds a fg_bg file's background by name (see the module doc); ties are ambiguous, not guessed."""

    def __init__(self, bgs: list[_File]):
        self.bgs = bgs
        self.by_stem: dict[str, list[_File]] = {}
        self.by_key: dict[str, list[_File]] = {}
        self.by_tokens: dict[tuple[str, ...], list[_File]] = {}
        for b in bgs:
            self.by_stem.setdefault(b.stem, []).append(b)
            self.by_key.setdefault(b.key, []).append(b)
            if re.search(r"[a-z]", b.stem):  # a bare number is too weak to find inside another name
                self.by_tokens.setdefault(tuple(_tokens(b.stem)), []).append(b)

    def find(self, f: _File) -> tuple[_File | None, str]:
        tiers = [(self.by_stem, f.stem), (self.by_key, f.key)]
        for index, s in tiers:
            for i in range(len(s), 0, -1):  # longest prefix first
                if _boundary(s, i) and s[:i] in index:
                    return self._one(index[s[:i]], s[:i])
        toks = _tokens(f.stem)
        best: tuple[int, list[_File]] | None = None
        for i in range(len(toks)):
            for j in range(len(toks), i, -1):
                hit = self.by_tokens.get(tuple(toks[i:j]))
                if hit and (best is None or j - i > best[0]):
                    best = (j - i, hit)
        if best:
            return self._one(best[1], " ".join(toks))
        if len(self.bgs) == 1:
            return self.bgs[0], ""
        return None, "no background's name matches it (name bg files so that their name starts the fg_bg " \
                     "name, or use --manifest)"

    @staticmethod
    def _one(hits: list[_File], what: str) -> tuple[_File | None, str]:
        if len(hits) == 1:
            return hits[0], ""
        return None, f"several backgrounds match '{what}' ({', '.join(h.name for h in hits[:3])}); use --manifest"


def match_files(names: list[str]) -> tuple[list[Item], list[dict[str, str]], int]:
    """Seed-layout names -> (samples, problems [{file, problem}], count of files that are none of the roles)."""
    files: dict[str, list[_File]] = {r: [] for r in ROLES}
    ignored = 0
    for name in names:
        r = _role(name)
        if r is None:
            ignored += 1
            continue
        role, sub = r
        stem = PurePosixPath(name).stem.lower()
        files[role].append(_File(name, sub, stem, _strip(stem, role)))
    problems: list[dict[str, str]] = []
    if not files["fg_bg"]:
        raise UserError("no fg_bg pictures found: put them in a folder named fg_bg (with bg/, mask/ and depth/ "
                        "beside it), or give a --manifest CSV")

    def keys(f: _File) -> tuple[tuple[str, ...], ...]:
        """Ways to match a name, most specific first: same sub-folder and name, same name anywhere, then the
        same with role prefixes/suffixes stripped."""
        return ("sub", f.sub, f.stem), ("any", f.stem), ("sub", f.sub, "=" + f.key), ("any", "=" + f.key)

    def index(role: str) -> dict[tuple[str, ...], list[_File]]:
        by: dict[tuple[str, ...], list[_File]] = {}
        for f in files[role]:
            for k in keys(f):
                by.setdefault(k, []).append(f)
        return by

    def lookup(by: dict[tuple[str, ...], list[_File]], f: _File) -> _File | None:
        for k in keys(f):
            if len(by.get(k, [])) == 1:
                return by[k][0]
        return None

    masks, depths, bgs = index("mask"), index("depth"), _BgIndex(files["bg"])
    items, used = [], set()
    for f in files["fg_bg"]:
        m, d = lookup(masks, f), lookup(depths, f)
        b, why = bgs.find(f)
        used.update(x.name for x in (m, d) if x is not None)
        missing = [w for w, x in (("mask", m), ("depth", d)) if x is None]
        if missing:
            problems.append({"file": f.name, "problem": f"no {' or '.join(missing)} file with a matching name"})
        elif b is None:
            problems.append({"file": f.name, "problem": why})
        else:
            items.append(Item(f.name, m.name, d.name, b.name))
    for role in ("mask", "depth"):
        problems += [{"file": x.name, "problem": f"{role} file without a matching fg_bg picture"}
                     for x in files[role] if x.name not in used]
    return items, problems, ignored


def read_manifest(path: str | os.PathLike, source: Source) -> list[Item]:
    """Rows of a CSV with columns bg, fg_bg, mask, depth (paths relative to the source)."""
    path = require_file(path, "manifest")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a readable CSV file ({e}); save it as UTF-8 CSV") from None
    if not rows:
        raise UserError(f"{path}: no rows; give a header line bg,fg_bg,mask,depth and one line per sample")
    cols = {c.strip().lower(): c for c in rows[0] if c}
    missing = [r for r in ROLES if r not in cols]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; the header must name bg, fg_bg, mask "
                        "and depth")

    def clean(v: str | None) -> str:
        return PurePosixPath((v or "").strip().replace("\\", "/")).as_posix().removeprefix("./")

    return [Item(*(clean(row[cols[r]]) for r in ("fg_bg", "mask", "depth", "bg"))) for row in rows]


# ---------------------------------------------------------------------------------------------------- decoding


class _Skip(Exception):
    """A sample that cannot be imported: (file, problem)."""

    def __init__(self, file: str, problem: str):
        super().__init__(problem)
        self.file, self.problem = file, problem


def _open(source: Source, name: str):
    """(decoded Pillow image, original bytes) of a source file, or _Skip saying why not."""
    label = source.label(name)
    try:
        data = source.read(name)
    except FileNotFoundError:
        raise _Skip(label, "file not found") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip member raises several kinds; all mean "unreadable"
        raise _Skip(label, f"cannot be read ({type(e).__name__}: {e})") from None
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:  # checked on the header, before decoding
            raise _Skip(label, f"{img.width}x{img.height} is over the {MAX_IMAGE_PIXELS:,}-pixel limit")
        img.load()
    except _Skip:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise _Skip(label, f"damaged or not a picture ({type(e).__name__}: {e})") from None
    return img, data


def _gray8(img) -> np.ndarray:
    """(H,W) uint8 of a mask-like picture: 16-bit scaled down; an alpha channel if that is where the mask is."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return (np.asarray(img).astype(np.uint32) // 257).clip(0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        gray = np.asarray(img.convert("L"))
        if gray.min() == gray.max() and rgba[..., 3].min() != rgba[..., 3].max():
            return rgba[..., 3].copy()
        return gray
    return np.asarray(img.convert("L"))


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if a.shape[:2] == size:
        return a
    img = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _fit(img_size: tuple[int, int], size: tuple[int, int], resize: bool, label: str) -> None:
    if not resize and img_size != size:
        raise _Skip(label, f"is {img_size[1]}x{img_size[0]}, the dataset is {size[1]}x{size[0]}; pass --size to "
                           "resize everything")


def _depth16(img, unit: str, label: str) -> np.ndarray:
    """(H,W) uint16 stored depth values: 8-bit v -> v*257 (relative), 16-bit as they are."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img)
        if a.max(initial=0) > 65535 or a.min(initial=0) < 0:
            raise _Skip(label, "depth values outside 0..65535; save depth as a 16-bit PNG")
        return a.astype(np.uint16)
    if img.mode == "F":
        raise _Skip(label, "floating-point depth is not supported; save it as a 16-bit PNG")
    if unit != "relative":
        raise _Skip(label, f"8-bit depth cannot hold {unit}; import 8-bit depth as relative (drop --depth-unit)")
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        spread = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max(axis=2)
        if (spread > 24).mean() > 0.01:
            raise _Skip(label, "depth is a colour picture (a colour map?); give grayscale depth")
    return _gray8(img).astype(np.uint16) * 257


@dataclass
class _Job:
    """One shard to write: samples (key, item, bg id) and how to convert them."""

    path: Path
    samples: list[tuple[str, Item, int]]
    size: tuple[int, int]
    resize: bool
    unit: str
    quality: int


@dataclass
class _Done:
    path: Path
    count: int
    problems: list[dict[str, str]] = field(default_factory=list)
    depth_max: int = 0


def _convert(source: Source, key: str, item: Item, bg_id: int, job: _Job) -> tuple[dict[str, bytes], int]:
    image, raw = _open(source, item.fg_bg)
    _fit((image.height, image.width), job.size, job.resize, source.label(item.fg_bg))
    if image.format == "JPEG" and image.mode == "RGB" and (image.height, image.width) == job.size:
        fg_bg = raw  # stored as it came: no second JPEG loss
    else:
        fg_bg = encode_jpeg(_resize(np.asarray(image.convert("RGB")), job.size, nearest=False), job.quality)
    mask_img, _ = _open(source, item.mask)
    _fit((mask_img.height, mask_img.width), job.size, job.resize, source.label(item.mask))
    mask = _resize(_gray8(mask_img), job.size, nearest=False)
    depth_img, _ = _open(source, item.depth)
    _fit((depth_img.height, depth_img.width), job.size, job.resize, source.label(item.depth))
    depth = _resize(_depth16(depth_img, job.unit, source.label(item.depth)), job.size, nearest=True)
    meta = {"bg": bg_id, "source": {"fg_bg": item.fg_bg, "mask": item.mask, "depth": item.depth, "bg": item.bg}}
    return ({"fg_bg.jpg": fg_bg, "mask.png": encode_png(mask), "depth.png": encode_png(depth),
             "json": json.dumps(meta, sort_keys=True).encode()}, int(depth.max(initial=0)))


def _write_shard(source: Source, job: _Job, on_sample=None) -> _Done:
    done = _Done(job.path, 0)

    def samples():
        for key, item, bg_id in job.samples:
            try:
                members, dmax = _convert(source, key, item, bg_id, job)
            except _Skip as e:
                done.problems.append({"file": e.file, "problem": e.problem})
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the import
                done.problems.append({"file": source.label(item.fg_bg), "problem": f"{type(e).__name__}: {e}"})
            else:
                done.depth_max = max(done.depth_max, dmax)
                yield key, members
            if on_sample:
                on_sample()

    done.count = write_shard(job.path, samples())
    if done.count == 0:
        job.path.unlink()
    return done


_SOURCE: Source | None = None


def _pool_init(source: Source) -> None:
    global _SOURCE
    _SOURCE = source


def _pool_write(job: _Job) -> _Done:
    assert _SOURCE is not None
    return _write_shard(_SOURCE, job)


# ---------------------------------------------------------------------------------------------------- import


def _prepare_out(out: Path, src: Path, force: bool) -> Path:
    o, s = out.resolve(), src.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise UserError(f"{out}: the output folder must be outside the source {src} (and not contain it)")
    return prepare_output_dir(out, DATASET_OUTPUT, force=force)


def import_dataset(src: str | os.PathLike, out: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                   size: tuple[int, int] | None = None, depth_unit: str = "relative",
                   depth_scale: float | None = None, test_fraction: float = 0.1, seed: int = 0,
                   shard_size: int = 1000, quality: int = 95, workers: int = 1, force: bool = False,
                   command: str = "", progress: bool = True) -> dict[str, Any]:
    """Import a seed-layout folder or zip `src` into the dataset folder `out`; returns the report (also written
    to out/import_report.json)."""
    if depth_unit not in DEPTH_UNITS:
        raise UserError(f"unknown depth unit '{depth_unit}'; use one of {', '.join(DEPTH_UNITS)}")
    if depth_unit == "metres" and not (depth_scale and depth_scale > 0):
        raise UserError("--depth-unit metres needs --depth-scale S: the metres of one 16-bit depth step "
                        "(e.g. 0.001 for millimetres)")
    if depth_unit == "relative" and depth_scale is not None:
        raise UserError("--depth-scale goes with --depth-unit metres; relative depth is always value/65535")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1) (got {test_fraction})")
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    source = Source(src)
    problems: list[dict[str, str]] = []
    ignored = 0
    if manifest is not None:
        items = read_manifest(manifest, source)
    else:
        items, problems, ignored = match_files(source.names())
        problems = [{"file": source.label(p["file"]), "problem": p["problem"]} for p in problems]
    if not items:
        raise UserError(f"{src}: no complete sample (fg_bg + mask + depth + bg) found; "
                        + (f"first problem: {problems[0]['file']}: {problems[0]['problem']}" if problems else
                           "check the folder names"))
    out = _prepare_out(Path(out), source.path, force)

    # backgrounds first: decoded once, written once; a sample whose bg is unreadable is skipped
    resize = size is not None
    if size is None:
        first = _open_first(source, items)
        size = (first.height, first.width)
    bg_names = sorted({it.bg for it in items})
    bg_ids: dict[str, int] = {}
    bg_problem: dict[str, str] = {}
    for name in bg_names:
        try:
            img, _ = _open(source, name)
            _fit((img.height, img.width), size, resize, source.label(name))
        except _Skip as e:
            bg_problem[name] = f"its background {e.file} {e.problem}"
            problems.append({"file": e.file, "problem": e.problem})
            continue
        bg_id = len(bg_ids)
        rgb_p, depth_p, _ = background_files(out, bg_id)
        atomic_write_bytes(rgb_p, encode_png(_resize(np.asarray(img.convert("RGB")), size, nearest=False)))
        atomic_write_bytes(depth_p, encode_depth_png(np.zeros(size, np.float32), 1.0))  # depth unknown
        bg_ids[name] = bg_id
    usable = []
    for it in items:
        if it.bg in bg_problem:
            problems.append({"file": source.label(it.fg_bg), "problem": bg_problem[it.bg]})
        else:
            usable.append(it)

    # split (by background when there are several), shuffle within each split, cut into shards
    rng = random.Random(seed)
    by_bg = len({it.bg for it in usable}) > 1
    groups = [it.bg if by_bg else i for i, it in enumerate(usable)]  # what the split keeps together
    test_groups = set(held_out(sorted(set(groups)), test_fraction, rng.sample))
    splits: dict[str, list[tuple[str, Item, int]]] = {"train": [], "test": []}
    for i, (it, g) in enumerate(zip(usable, groups)):
        splits["test" if g in test_groups else "train"].append((f"{i:08d}", it, bg_ids[it.bg]))
    jobs = []
    for split, samples in splits.items():
        rng.shuffle(samples)
        for k in range(0, len(samples), shard_size):
            jobs.append((split, _Job(out / "shards" / shard_name(split, k // shard_size),
                                     samples[k:k + shard_size], size, resize, depth_unit, quality)))
    (out / "shards").mkdir(parents=True, exist_ok=True)

    done: list[tuple[str, _Done]] = []
    with Progress(len(usable), "import", unit="sample", enabled=progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for split, job in jobs:
                done.append((split, _write_shard(source, job, on_sample=lambda: bar.update(1))))
        else:
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"),
                                     initializer=_pool_init, initargs=(source,)) as pool:
                for (split, job), d in zip(jobs, pool.map(_pool_write, [j for _, j in jobs])):
                    done.append((split, d))
                    bar.update(len(job.samples))

    names: dict[str, list[str]] = {"train": [], "test": []}
    counts: dict[str, list[int]] = {"train": [], "test": []}
    for split, d in done:
        problems += d.problems
        if d.count:  # shards are renumbered if one ended up empty
            name = shard_name(split, len(names[split]))
            if d.path.name != name:
                d.path.rename(out / "shards" / name)
            names[split].append(name)
            counts[split].append(d.count)
    n = {s: sum(c) for s, c in counts.items()}
    if n["train"] + n["test"] == 0:
        raise UserError(f"{src}: none of the {len(items)} samples could be imported; first problem: "
                        f"{problems[0]['file']}: {problems[0]['problem']}")
    raw_max = max((d.depth_max for _, d in done), default=0)
    scale = depth_scale if depth_unit == "metres" else RELATIVE_DEPTH_SCALE
    meta = DatasetMetadata.new(
        generator="maskdepth data import", source="import", size=size,
        depth={"unit": depth_unit, "scale": scale,
               "max": 1.0 if depth_unit == "relative" else round_depth_max(max(raw_max, 1) * scale)},
        counts={"train": n["train"], "test": n["test"], "backgrounds": len(bg_ids), "skipped": len(problems)},
        split={"by": "background" if by_bg else "sample", "test_fraction": test_fraction, "seed": seed},
        shards=names, shard_counts=counts, command=command,
        **{"import": {"src": str(src), "manifest": str(manifest) if manifest else None, "seed": seed,
                      "test_fraction": test_fraction, "shard_size": shard_size, "jpeg_quality": quality,
                      "resized": resize}})
    report = {"src": str(src), "out": str(out), "imported": n, "backgrounds": len(bg_ids),
              "skipped": problems, "ignored_files": ignored}
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    meta.write(out)  # last: a folder with metadata.json is a complete dataset
    return report


def _open_first(source: Source, items: list[Item]):
    """The first readable fg_bg picture (its size is the dataset's when --size is not given)."""
    for it in items:
        try:
            return _open(source, it.fg_bg)[0]
        except _Skip:
            continue
    raise UserError(f"{source.path}: none of the fg_bg pictures can be read; check the files")


def summary(report: dict[str, Any], show: int = 10) -> str:
    """A few lines for the terminal."""
    n = report["imported"]
    lines = [f"imported {n['train'] + n['test']} samples (train {n['train']}, test {n['test']}) with "
             f"{report['backgrounds']} backgrounds into {report['out']}"]
    skipped = report["skipped"]
    if skipped:
        lines.append(f"skipped {len(skipped)} (all listed in {Path(report['out']) / REPORT}):")
        lines += [f"  {p['file']}: {p['problem']}" for p in skipped[:show]]
        if len(skipped) > show:
            lines.append(f"  ... and {len(skipped) - show} more")
    if report["ignored_files"]:
        lines.append(f"ignored {report['ignored_files']} files that are not bg / fg_bg / mask / depth pictures")
    return "\n".join(lines)
