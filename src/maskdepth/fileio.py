"""Writes that never leave half a file, an output-folder guard, and image reading that fails in one line."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from maskdepth.errors import UserError

# Larger images are refused before decoding (decompression bombs); 64 Mpx is well above any camera frame we need.
MAX_IMAGE_PIXELS = 64_000_000


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def prepare_output_dir(path: str | os.PathLike, force: bool, owned_by: str, what: str = "output") -> Path:
    """Make `path` ready to write into.

    An empty or missing folder is fine; so is one that holds the marker file `owned_by` (our own earlier output,
    which the caller resumes or replaces). A folder with anything else is refused unless `force`, in which case
    it is emptied. Nothing the user made is removed without --force.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder; choose another {what} path")
    if path.is_dir():
        entries = [p for p in path.iterdir()]
        if entries and not (path / owned_by).exists():
            if not force:
                raise UserError(
                    f"{path}: folder is not empty and is not a maskdepth {what}; "
                    f"choose an empty or new folder, or pass --force to replace its contents"
                )
            for p in entries:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    import io

    return _open_checked(io.BytesIO(data), name, max_pixels, "send a complete PNG or JPEG")


def _open_checked(source, name: str, max_pixels: int | None, what_to_do: str):
    import warnings

    from PIL import Image

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


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H,W,3) uint8 from any image file (grayscale, RGBA and 16-bit are converted)."""
    from maskdepth.codecs import to_rgb_uint8

    return to_rgb_uint8(open_image(path))
