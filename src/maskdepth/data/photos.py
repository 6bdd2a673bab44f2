"""The user's own pictures: background photos of any size and format, and RGBA cutouts, made ready to compose.

Backgrounds are fitted to the dataset size by centre crop (fills the frame, loses the edges) or letterbox (keeps
the whole photo, pads with black bars that are never floor and have unknown depth). EXIF orientation is applied.
Their depth is unknown (0) until a depth teacher gives it (`add_teacher_depth`).

Floor (where a cutout may stand): the part of the frame below `horizon` (a fraction of the height from the top,
default 0.45, the nominal camera's of data/banks.py) plus a small margin (objects right at the horizon would be
specks). With teacher depth the floor is narrowed to the pixels below the horizon where the depth grows
upwards, as it does on a floor seen from above (a wall or a piece of furniture facing the camera has a depth
that stays level going up); if that leaves almost nothing, the horizon rule stands.

Object size: a photo's camera is unknown, so sizes follow the nominal camera of data/banks.py (1.5 m high, 60
degree field of view): with metric teacher depth, `focal_px * height_m / depth` as for rooms; with relative
teacher depth, `focal_px` is divided by the factor k that best maps the teacher's floor depth onto the nominal
floor (median of nominal / teacher over floor pixels), so the same formula gives the nominal sizes while every
depth, the contact depth included, stays in the teacher's own units. Without a teacher the banks place objects on
the nominal floor and depth is unknown.

Pictures that cannot be used (undecodable, a cutout without alpha, fully transparent) are skipped and listed
(`Skipped`), so one bad file in a folder of hundreds costs that file only; nothing is written for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from maskdepth.codecs import to_rgb_uint8
from maskdepth.data.banks import NOMINAL_FLOOR_MARGIN, NOMINAL_HORIZON, nominal_ground
from maskdepth.data.cutouts import Cutout, load_cutout
from maskdepth.data.rooms import Background
from maskdepth.errors import UserError
from maskdepth.fileio import atomic_write_text, open_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
FITS = ("crop", "letterbox")
DEFAULT_HORIZON = NOMINAL_HORIZON
# Floor from depth: the depth `FLOOR_STEP` of the height higher up must be at least FLOOR_RISE larger. On a floor
# seen from a camera 1.5 m up, depth grows by ~6% over 1/32 of the height even at the bottom of the frame.
FLOOR_STEP = 1 / 32
FLOOR_RISE = 0.02
# ... and the depth rule is used only if it keeps at least this fraction of the horizon rule's floor.
MIN_FLOOR_KEPT = 0.1


@dataclass
class Skipped:
    """A picture left out, and why (one line)."""

    path: str
    reason: str


@dataclass
class Photo:
    """A background photo fitted to the dataset size; `content` is False on letterbox bars."""

    background: Background
    content: np.ndarray  # (H,W) bool
    name: str


def list_images(folder: str | os.PathLike, what: str) -> list[Path]:
    """Image files directly in `folder`, sorted by name; a missing or empty folder is one clear line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: {what} folder not found; give a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this {what} folder")
    return files


def fit_photo(rgb: np.ndarray, size: tuple[int, int], fit: str = "crop") -> tuple[np.ndarray, np.ndarray]:
    """(H,W,3) uint8 of any size -> (image at `size`, content mask). crop: centre crop to the aspect then resize;
    letterbox: resize to fit inside, centred on black."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    H, W = size
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    if fit == "crop":
        s = max(H / h, W / w)
        ch, cw = min(h, round(H / s)), min(w, round(W / s))  # the source region with the target's aspect
        top, left = (h - ch) // 2, (w - cw) // 2
        out = img.resize((W, H), Image.LANCZOS, box=(left, top, left + cw, top + ch), reducing_gap=3.0)
        return np.asarray(out), np.ones((H, W), bool)
    s = min(H / h, W / w)
    rh, rw = max(1, min(H, round(h * s))), max(1, min(W, round(w * s)))
    top, left = (H - rh) // 2, (W - rw) // 2
    canvas = np.zeros((H, W, 3), np.uint8)
    canvas[top:top + rh, left:left + rw] = np.asarray(img.resize((rw, rh), Image.LANCZOS, reducing_gap=3.0))
    content = np.zeros((H, W), bool)
    content[top:top + rh, left:left + rw] = True
    return canvas, content


def floor_mask(content: np.ndarray, horizon: float = DEFAULT_HORIZON, depth: np.ndarray | None = None
               ) -> np.ndarray:
    """Where a cutout may stand: content below `horizon`, narrowed by depth if given (module docstring)."""
    H = content.shape[0]
    floor = content & (np.arange(H)[:, None] + 0.5 >= (horizon + NOMINAL_FLOOR_MARGIN) * H)
    if depth is None:
        return floor
    step = max(1, round(FLOOR_STEP * H))
    above = np.zeros_like(depth)
    above[step:] = depth[:-step]
    recedes = floor & (depth > 0) & (above > depth * (1.0 + FLOOR_RISE))
    return recedes if recedes.sum() >= MIN_FLOOR_KEPT * floor.sum() else floor


def load_photo(path: str | os.PathLike, size: tuple[int, int], fit: str = "crop",
               horizon: float = DEFAULT_HORIZON) -> Photo:
    """One background photo, fitted; depth unknown (0). Unreadable: UserError naming the file."""
    path = Path(path)
    img = open_image(path)
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError):
        pass  # a damaged EXIF block: use the pixels as stored
    image, content = fit_photo(to_rgb_uint8(img), size, fit)
    bg = Background(image=image, depth=np.zeros(size, np.float32), floor=floor_mask(content, horizon),
                    focal_px=nominal_ground(size)[2])
    return Photo(bg, content, path.stem)


def load_background_photos(folder: str | os.PathLike, size: tuple[int, int], fit: str = "crop",
                           horizon: float = DEFAULT_HORIZON) -> tuple[list[Photo], list[Skipped]]:
    """All usable photos in `folder` (sorted by name) and the ones skipped. None usable: UserError."""
    photos, skipped = [], []
    for p in list_images(folder, "background"):
        try:
            photos.append(load_photo(p, size, fit, horizon))
        except UserError as e:
            skipped.append(Skipped(str(p), str(e)))
    if not photos:
        raise UserError(f"{folder}: none of its {len(skipped)} background images could be read "
                        f"(first: {skipped[0].reason})")
    return photos, skipped


def add_teacher_depth(photos: list[Photo], teacher, horizon: float = DEFAULT_HORIZON,
                      progress: bool = True) -> list[Photo]:
    """Depth of each background from the teacher (once per background, cached), floor narrowed by it, and for
    relative depth the focal length that keeps nominal object sizes (module docstring)."""
    depths = teacher.predict([p.background.image for p in photos], progress=progress)
    return [with_depth(p, d, teacher.unit, horizon) for p, d in zip(photos, depths)]


def with_depth(photo: Photo, depth: np.ndarray, unit: str, horizon: float = DEFAULT_HORIZON) -> Photo:
    """`photo` with `depth` (in `unit`: "metres" or "relative") as its background's depth."""
    d = np.where(photo.content, depth, 0.0).astype(np.float32)
    floor = floor_mask(photo.content, horizon, d)
    focal = photo.background.focal_px
    if unit == "relative":
        focal /= relative_to_metres(d, floor)
    bg = Background(image=photo.background.image, depth=d, floor=floor, focal_px=focal)
    return Photo(bg, photo.content, photo.name)


def relative_to_metres(depth: np.ndarray, floor: np.ndarray) -> float:
    """k with k * relative depth ~ the nominal floor's depth in metres: median ratio over floor pixels."""
    nominal, nominal_floor, _ = nominal_ground(depth.shape)
    for region in (floor & nominal_floor & (depth > 0), nominal_floor & (depth > 0)):
        if region.any():
            return float(np.median(nominal[region] / depth[region]))
    return 1.0


def fit_cutout(cutout: Cutout, max_side: int) -> Cutout:
    """Shrink a cutout whose longest side exceeds `max_side` (alpha-premultiplied, so edges stay clean)."""
    h, w = cutout.rgba.shape[:2]
    if max(h, w) <= max_side:
        return cutout
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = Image.fromarray(cutout.rgba, "RGBA").convert("RGBa").resize(size, Image.LANCZOS, reducing_gap=3.0)
    return Cutout(rgba=np.asarray(img.convert("RGBA")), height_m=cutout.height_m, name=cutout.name)


def load_cutout_photos(folder: str | os.PathLike, max_side: int, default_height_m: float = 1.0
                       ) -> tuple[list[Cutout], list[Skipped]]:
    """The user's RGBA cutouts (trimmed to their alpha's box, at most `max_side` px) and the ones skipped."""
    cutouts, skipped = [], []
    for p in list_images(folder, "cutout"):
        try:
            c = load_cutout(p)
        except UserError as e:
            skipped.append(Skipped(str(p), str(e)))
            continue
        c.height_m = default_height_m
        cutouts.append(fit_cutout(c, max_side))
    if not cutouts:
        raise UserError(f"{folder}: none of its {len(skipped)} cutout images is usable "
                        f"(first: {skipped[0].reason})")
    return cutouts, skipped


def parse_fraction_range(text: str, what: str = "--fg-scale") -> tuple[float, float]:
    """'a:b' with 0 < a <= b <= 1 (a single value means a:a)."""
    try:
        parts = [float(x) for x in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 0 < parts[0] <= parts[1] <= 1:
        raise UserError(f"{what} {text!r}: give a range a:b of fractions of the image height with "
                        "0 < a <= b <= 1, e.g. 0.2:0.6")
    return parts[0], parts[1]


def write_skip_report(path: str | os.PathLike, skipped: list[Skipped]) -> None:
    """JSON list of the pictures left out (written even when empty, so a clean run says so)."""
    atomic_write_text(path, json.dumps({"skipped": [asdict(s) for s in skipped]}, indent=2) + "\n")
