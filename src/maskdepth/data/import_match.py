"""Matching for `maskdepth data import`: which bg / fg_bg / mask / depth files of a seed-layout folder or zip (or
a CSV manifest) make one sample. Nothing is decoded here; data/importer.py decodes and writes the dataset.

A seed layout keeps each kind of picture in its own folder (bg/, fg_bg/, mask/, depth/, or names like
"Backgrounds", "masks", "DepthImage"; sub-folders inside them are fine) or, in one flat folder, names that start
with fg_bg / mask / depth / bg. A mask or depth file belongs to the fg_bg file with the same name, maybe with a
prefix or suffix such as mask_ / _depth; a sample's bg is the one whose name starts the fg_bg name (bg_12 ->
fg_bg_12_5 or bg_12_fg_3), or whose name is a token of it, or the only bg there is. A CSV manifest (columns bg,
fg_bg, mask, depth, paths relative to SRC) names the files instead.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from maskdepth.errors import UserError
from maskdepth.fileio import require_file

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
ROLES = ("bg", "fg_bg", "mask", "depth")

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
