"""Writes that never leave half a file, the one output-folder rule (what --force may remove), a folder lock, and
image reading that fails in one line."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import io
import os
import stat
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from maskdepth.errors import UserError

# Larger images are refused before decoding (decompression bombs); 64 Mpx is well above any camera frame we need.
MAX_IMAGE_PIXELS = 64_000_000


def _umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path: str | os.PathLike, e: OSError) -> UserError:
    """One line for a write that failed: a full disk, a read-only file system, a parent that is a file."""
    why = e.strerror or str(e)
    hint = ("free some space or write elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "choose another output path")
    return UserError(f"{path}: cannot write ({why}); {hint}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`, else removed.

    The file gets the mode a plain open() would give (0666 less the umask), or the mode of the file it replaces.
    OS errors while writing (a full disk, a read-only folder) become one UserError naming `path`.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        tmp = Path(name)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


TEMP_SUFFIX = ".tmp"


def is_temp(p: Path) -> bool:
    """A temporary file of atomic_path (left behind only by a killed process)."""
    return p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> int:
    """Remove what killed writes of `folder/name` left (atomic_path's hidden temporary files); returns how many.
    Only a command that owns the folder calls this (under its lock, or resuming), so no other process is
    writing one of them."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = [p for p in folder.glob(f".{name}.*{TEMP_SUFFIX}") if p.is_file() and not p.is_symlink()]
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock file `path` for the duration; if another process holds it, one clear line at once. The file
    stays (removing a lock file while another process opens it would let two hold it)."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        f = open(path, "a+b")
    except OSError as e:
        raise write_error(path, e) from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path.parent}: another {what} is writing into this folder; wait for it to finish "
                            "(rerun afterwards to resume), or choose another folder") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class OutputKind:
    """A kind of folder maskdepth writes: what it is called, the files that mark a folder as one of them, and
    glob patterns (relative to the folder) of everything maskdepth writes there. --force removes only those."""

    what: str
    markers: tuple[str, ...]
    owned: tuple[str, ...]

    def is_own(self, path: Path) -> bool:
        """A marker is there, or everything in the folder is something maskdepth writes (a command that was
        stopped before it wrote its marker)."""
        if any((path / m).exists() for m in self.markers):
            return True
        entries = [e for e in path.iterdir() if not is_temp(e)]
        if not entries or not all(self._top(e.name) for e in entries):
            return False  # decided from the top level alone: a big unrelated folder is never walked
        return all(self.owns(rel) for _, rel in _files(path, entries))

    def owns(self, rel: str) -> bool:
        """Whether maskdepth writes the file at `rel` (a path relative to the folder, with '/')."""
        return is_temp(Path(rel)) or any(fnmatch.fnmatchcase(rel, p) for p in self.owned)

    def _top(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p.split("/")[0]) for p in self.owned)


def _files(path: Path, entries: list[Path]) -> Iterator[tuple[Path, str]]:
    """(file, relative path) of every file or link below `entries`, never following a link into a folder."""
    for e in entries:
        if e.is_dir() and not e.is_symlink():
            for dirpath, _, names in os.walk(e):  # os.walk does not follow links by default
                for n in names:
                    f = Path(dirpath) / n
                    yield f, f.relative_to(path).as_posix()
        else:
            yield e, e.relative_to(path).as_posix()


def prepare_output_dir(path: str | os.PathLike, kind: OutputKind, *, force: bool = False, resume: bool = False,
                       inputs: Iterable[str | os.PathLike | None] = (), own_hint: str | None = None,
                       keep: tuple[str, ...] = ()) -> Path:
    """Make `path` ready for a command to write a `kind` folder into, the one rule for every command:

    - a missing or empty folder is created;
    - a folder that is one of ours (it holds a marker): returned as it is with `resume`; with `force` the files
      maskdepth wrote there are removed but `keep` (anything else the user put there stays); otherwise refused;
    - any other non-empty folder is refused, --force or not: maskdepth never removes what it did not write;
    - an input of the same command (`inputs`) inside the folder is refused, --force or not.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder; choose another --out path")
    out = path.resolve()
    for i in inputs:
        if i is None:
            continue
        r = Path(i).resolve()
        if r == out or out in r.parents:
            raise UserError(f"{i}: an input of this command lies inside the output folder {path}; choose an "
                            "output folder that does not hold the command's inputs")
    if path.is_dir():
        entries = [p for p in path.iterdir() if not is_temp(p)]
        if kind.is_own(path):
            if force:
                remove_owned(path, kind, keep)
            elif not resume:
                raise UserError(own_hint or f"{path}: already holds a maskdepth {kind.what}; choose another "
                                "folder, or pass --force to replace it (only maskdepth's own files are removed)")
        elif entries:
            raise UserError(f"{path}: folder is not empty and is not a maskdepth {kind.what}; choose an empty or "
                            "new folder (--force never removes files maskdepth did not write)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    return path


def remove_owned(path: Path, kind: OutputKind, keep: tuple[str, ...] = ()) -> None:
    """Remove the files `kind` says maskdepth wrote in `path` (and atomic_path's leftovers) but `keep`, then the
    folders that became empty. Files of the user's beside or among them stay; no link is followed."""
    entries = [e for e in path.iterdir() if (kind._top(e.name) or is_temp(e)) and e.name not in keep]
    for f, rel in list(_files(path, entries)):
        if kind.owns(rel):
            f.unlink()
    for e in entries:
        if e.is_dir() and not e.is_symlink():
            for dirpath, _, _ in sorted(os.walk(e), key=lambda w: len(w[0]), reverse=True):
                if not os.listdir(dirpath):
                    os.rmdir(dirpath)


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found; check the path")
    if not path.is_file():
        raise UserError(f"{path}: is not a file; give the path of a {what}")
    return path


def open_image(path: str | os.PathLike, max_pixels: int | None = None):
    """Open an image with Pillow, refusing unreadable files and decompression bombs with one clear line.

    The size is checked on the header before any pixel is decoded; Pillow's process-wide limit is left alone.
    """
    path = require_file(path, "image")
    return _open_checked(path, str(path), max_pixels, "replace or remove the file")


def open_image_bytes(data: bytes, name: str, max_pixels: int | None = None):
    """`open_image` for an image held in memory (an upload); `name` is what error messages call it."""
    return _open_checked(io.BytesIO(data), name, max_pixels, "send a complete PNG or JPEG")


def _open_checked(source, name: str, max_pixels: int | None, what_to_do: str):
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels  # read now: tests may lower the limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        if img.width * img.height > max_pixels:
            raise UserError(
                f"{name}: image is {img.width}x{img.height}, larger than the {max_pixels:,}-pixel limit; "
                "downscale it first"
            )
        img.load()
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(
            f"{name}: image is larger than the {max_pixels:,}-pixel limit (decompression bomb guard); "
            "downscale it first"
        ) from None
    except Image.UnidentifiedImageError:
        raise UserError(f"{name}: cannot read image (not a picture format Pillow knows); {what_to_do}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name}: cannot read image ({e}); {what_to_do}") from None
    return img
