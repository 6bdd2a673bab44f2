"""Pictures for people: depth colouring, mask overlays and labelled grids of tiles (uint8 RGB numpy arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from maskdepth.codecs import encode_png
from maskdepth.fileio import atomic_write_bytes

# Height of the label strip above a grid's columns, in pixels.
LABEL_H = 16

# Polynomial fit of Google's Turbo colormap (A. Mikhailov, R. Du, 2019; Apache-2.0): coefficients of
# 1, x, x^2, x^3, x^4, x^5 per channel. Evaluated once into a 256-entry lookup table.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])
_x = np.linspace(0.0, 1.0, 256)
TURBO_LUT = np.clip(np.rint(255 * (_TURBO @ np.stack([_x**k for k in range(6)]))), 0, 255).astype(np.uint8).T
del _x


def to_uint8(x) -> np.ndarray:
    """One picture -> uint8 numpy, (H,W) or (H,W,3|4).

    Accepts a torch tensor or numpy array; channel-first (C,H,W) with C in 1, 3, 4 is moved last; (H,W,1) and
    (1,H,W) become (H,W). Floats are taken as [0,1] and clipped, bools as 0/1, uint16 as 0..65535.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"expected one picture (H,W) or (H,W,C), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def colorize_depth(depth, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H,W) depth -> (H,W,3) uint8 Turbo colours: near is red, far is blue, unknown (<= 0, NaN) is black.

    vmin/vmax default to the range of the known values, so any unit (metres, relative) reads well.
    """
    if hasattr(depth, "detach"):
        depth = depth.detach().cpu().numpy()
    d = np.asarray(depth, dtype=np.float32)
    d = d.reshape(d.shape[-2:]) if d.ndim > 2 else d
    valid = np.isfinite(d) & (d > 0)
    if vmin is None or vmax is None:
        known = d[valid]
        lo, hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    span = max(float(vmax) - float(vmin), 1e-12)
    t = np.clip((np.where(valid, d, vmax) - vmin) / span, 0.0, 1.0)
    idx = np.rint((1.0 - t) * 255).astype(np.uint8)  # near -> 255 -> red end of Turbo
    out = TURBO_LUT[idx]
    out[~valid] = 0
    return out


def overlay(image, mask, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5) -> np.ndarray:
    """Tint `image` (H,W,3) with `color` where `mask` (H,W, float [0,1] or uint8) is on; returns uint8."""
    img = to_uint8(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    m = to_uint8(mask).astype(np.float32)[..., None] / 255.0 * alpha
    if m.shape[:2] != img.shape[:2]:
        raise ValueError(f"mask is {m.shape[:2]}, image is {img.shape[:2]}: they must match")
    out = img[..., :3].astype(np.float32) * (1.0 - m) + np.asarray(color, np.float32) * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _tile(x, size: tuple[int, int]) -> np.ndarray:
    """Any picture -> (h,w,3) uint8 at `size` (h, w)."""
    a = to_uint8(x)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    if a.shape[:2] != size:
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((size[1], size[0]), Image.BILINEAR))
    return a


def make_grid(rows: Sequence[Sequence], labels: Sequence[str] | None = None, pad: int = 2,
              background: int = 255, tile: tuple[int, int] | None = None) -> np.ndarray:
    """Lay pictures out in rows -> one (H,W,3) uint8 picture.

    Every tile is resized to `tile` (h, w), by default the first tile's size; gray tiles become RGB; short rows
    are left blank at the end. `labels`, if given, name the columns in a strip of LABEL_H pixels above the grid.
    """
    rows = [list(r) for r in rows]
    if not rows or not any(rows):
        raise ValueError("make_grid needs at least one picture")
    th, tw = tile or to_uint8(next(t for r in rows for t in r)).shape[:2]
    ncols = max(len(r) for r in rows)
    top = LABEL_H + pad if labels else 0
    h = top + pad + len(rows) * (th + pad)
    w = pad + ncols * (tw + pad)
    grid = np.full((h, w, 3), background, np.uint8)
    for i, row in enumerate(rows):
        y = top + pad + i * (th + pad)
        for j, t in enumerate(row):
            x = pad + j * (tw + pad)
            grid[y:y + th, x:x + tw] = _tile(t, (th, tw))
    if labels:
        img = Image.fromarray(grid)
        draw = ImageDraw.Draw(img)
        for j, text in enumerate(labels[:ncols]):
            draw.text((pad + j * (tw + pad) + 2, pad + 1), str(text), fill=(0, 0, 0))
        grid = np.asarray(img).copy()
    return grid


def save_png(path, picture: np.ndarray) -> None:
    """Write a uint8 picture as PNG atomically."""

    atomic_write_bytes(path, encode_png(to_uint8(picture)))
