"""Procedural textures with natural-image statistics, laid in world coordinates and sampled without aliasing.

A texture is a periodic square raster over a world patch of `patch_m` metres (tiling covers any surface), made
once from a `TextureSpec` and kept with its mip pyramid. `Texture.sample(u, v, footprint)` looks it up at world
coordinates (metres) with trilinear filtering: `footprint` is the size of one output pixel on the surface, so
detail finer than a pixel fades to its mean instead of aliasing (far floors, grazing walls).

Kinds: fractal 1/f noise (plaster, concrete, carpet), dead leaves (occluding discs: the classic model of natural
image statistics), tiles (square or brick bond, with grout), planks (boards with grain and joints), stripes
(wallpaper), wood (rings and grain). Everything is numpy (plus Pillow for disc drawing) and deterministic from the
spec's seed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("noise", "dead_leaves", "tiles", "planks", "stripes", "wood")

# Pattern periods per patch side: patch_m = scale * PERIODS[kind], so every pattern tiles seamlessly.
PERIODS = {"noise": 1, "dead_leaves": 6, "tiles": 8, "planks": 8, "stripes": 12, "wood": 4}

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class TextureSpec:
    """What defines one texture. `scale` (metres) is the pattern's main feature size: the patch for noise, the
    largest leaf radius, the tile height, the plank width, the stripe period, the board width for wood."""

    kind: str
    seed: int
    color_a: RGB
    color_b: RGB
    scale: float
    contrast: float = 0.5  # 0..1: how far the pattern departs from its base colours

    @property
    def patch_m(self) -> float:
        return self.scale * PERIODS[self.kind]

    @classmethod
    def from_dict(cls, d: dict) -> TextureSpec:
        return cls(kind=d["kind"], seed=int(d["seed"]), color_a=tuple(d["color_a"]), color_b=tuple(d["color_b"]),
                   scale=float(d["scale"]), contrast=float(d["contrast"]))


def random_color(rng: np.random.Generator, sat: tuple[float, float] = (0.05, 0.6),
                 val: tuple[float, float] = (0.25, 0.9), hue: tuple[float, float] = (0.0, 1.0)) -> RGB:
    """An RGB colour in [0,1] drawn uniformly in HSV within the given ranges."""
    h, s, v = rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val)
    return tuple(round(c, 4) for c in colorsys.hsv_to_rgb(h, s, v))


def random_spec(rng: np.random.Generator, kind: str, scale: float, color_a: RGB, color_b: RGB,
                contrast: tuple[float, float] = (0.3, 0.9)) -> TextureSpec:
    """A spec with a fresh seed and a contrast drawn from `contrast`."""
    return TextureSpec(kind=kind, seed=int(rng.integers(2**31)), color_a=color_a, color_b=color_b,
                       scale=round(float(scale), 4), contrast=round(float(rng.uniform(*contrast)), 4))


class Texture:
    """A periodic albedo raster, channel-first (3, T, T), covering `patch_m` x `patch_m` metres, with its mip
    pyramid. Channel-first throughout: numpy is several times faster on whole planes than on (..., 3) pixels."""

    def __init__(self, texels: np.ndarray, patch_m: float):
        size = texels.shape[-1]
        if texels.shape != (3, size, size) or size & (size - 1):
            raise ValueError(f"texture must be (3,T,T) with T a power of two, got {texels.shape}")
        self.patch_m = float(patch_m)
        self.size = size
        levels = [np.asarray(texels, dtype=np.float32)]
        while levels[-1].shape[-1] > 1:
            a = levels[-1]
            levels.append(0.25 * (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]))
        self.levels = levels
        # All levels in one (3, texels) array so a lookup at per-pixel levels is a single np.take per corner.
        self._planes = np.concatenate([lv.reshape(3, -1) for lv in levels], axis=1)
        sizes = np.array([lv.shape[-1] for lv in levels], dtype=np.int64)
        self._sizes = sizes
        self._offsets = np.concatenate([[0], np.cumsum(sizes * sizes)[:-1]]).astype(np.int64)

    @property
    def mean(self) -> np.ndarray:
        return self.levels[-1].reshape(3)

    def sample(self, u: np.ndarray, v: np.ndarray, footprint: np.ndarray | float) -> np.ndarray:
        """Colours at world coordinates u, v (metres), filtered over `footprint` metres: (3, *u.shape) float32."""
        u = np.asarray(u, dtype=np.float32)
        shape = u.shape
        u = u.ravel()
        v = np.asarray(v, dtype=np.float32).ravel()
        fp = np.broadcast_to(np.asarray(footprint, dtype=np.float32), shape).ravel()
        lod = np.log2(np.maximum(fp * np.float32(self.size / self.patch_m), np.float32(1.0)))
        lod = np.minimum(lod, np.float32(len(self.levels) - 1))
        l0 = lod.astype(np.int64)  # lod >= 0, so truncation is floor
        c = self._bilinear(u, v, l0)
        c += (self._bilinear(u, v, np.minimum(l0 + 1, len(self.levels) - 1)) - c) * (lod - l0)
        return c.reshape(3, *shape)

    def _bilinear(self, u: np.ndarray, v: np.ndarray, level: np.ndarray) -> np.ndarray:
        n = self._sizes[level]
        wrap = n - 1  # sizes are powers of two: & wraps, negatives included
        per_m = n.astype(np.float32) * np.float32(1.0 / self.patch_m)
        x = u * per_m - np.float32(0.5)
        y = v * per_m - np.float32(0.5)
        x0 = np.floor(x)
        y0 = np.floor(y)
        fx = x - x0
        fy = y - y0
        i0 = x0.astype(np.int64) & wrap
        i1 = (i0 + 1) & wrap
        j0 = y0.astype(np.int64)
        r0 = self._offsets[level] + (j0 & wrap) * n
        r1 = self._offsets[level] + ((j0 + 1) & wrap) * n
        f = self._planes
        a, b = np.take(f, r0 + i0, axis=1), np.take(f, r0 + i1, axis=1)
        c, d = np.take(f, r1 + i0, axis=1), np.take(f, r1 + i1, axis=1)
        a += (b - a) * fx
        c += (d - c) * fx
        a += (c - a) * fy
        return a


def make_texture(spec: TextureSpec, texels: int = 256) -> Texture:
    """Render `spec` into a periodic (3, texels, texels) raster and wrap it as a Texture."""
    if spec.kind not in _MAKERS:
        raise ValueError(f"unknown texture kind {spec.kind!r}; expected one of {', '.join(KINDS)}")
    rng = np.random.default_rng(spec.seed)
    img = _MAKERS[spec.kind](spec, rng, texels)
    return Texture(np.clip(img, 0.0, 1.0).astype(np.float32), spec.patch_m)


# ---------------------------------------------------------------------------------------------------------------
# building blocks


def fractal_noise(rng: np.random.Generator, size: int, slope: float = 1.0, stretch: tuple[float, float] = (1, 1),
                  fmin: float = 1.0) -> np.ndarray:
    """Periodic (size, size) float32 noise with amplitude spectrum 1/f**slope (slope 1 is natural images' 1/f^2
    power), zero mean and unit std. `stretch` = (sx, sy) scales frequencies per axis: sx > 1 gives streaks
    along x."""
    fy = np.fft.fftfreq(size).astype(np.float32) * (size * stretch[1])
    fx = np.fft.rfftfreq(size).astype(np.float32) * (size * stretch[0])
    f = np.sqrt(fx[None, :] ** 2 + fy[:, None] ** 2)
    amp = np.where(f >= fmin, np.maximum(f, np.float32(1e-6)) ** np.float32(-slope), np.float32(0))
    spectrum = np.empty(amp.shape, np.complex64)
    spectrum.real = amp * rng.standard_normal(amp.shape, dtype=np.float32)
    spectrum.imag = amp * rng.standard_normal(amp.shape, dtype=np.float32)
    n = np.fft.irfft2(spectrum, s=(size, size))
    n -= n.mean()
    return (n / max(float(n.std()), 1e-12)).astype(np.float32, copy=False)


def _coords(size: int) -> np.ndarray:
    """Texel centres as fractions of the patch, (size,) in (0, 1)."""
    return (np.arange(size, dtype=np.float32) + 0.5) / size


def _pulse(x: np.ndarray, width: float, fw: float) -> np.ndarray:
    """Box-filtered pulse train: fraction of [x - fw/2, x + fw/2] covered by [k, k + width) for integers k.
    Exact anti-aliasing of grout lines, joints and stripe edges at texel scale."""

    def integral(t):
        return np.floor(t) * width + np.minimum(t - np.floor(t), width)

    return (integral(x + fw / 2) - integral(x - fw / 2)) / fw


def _mix(a: RGB, b: RGB, w: np.ndarray) -> np.ndarray:
    """(3, *w.shape): colour a where w = 0, b where w = 1."""
    w = np.asarray(w, dtype=np.float32)
    a = np.asarray(a, dtype=np.float32).reshape((3,) + (1,) * w.ndim)
    b = np.asarray(b, dtype=np.float32).reshape((3,) + (1,) * w.ndim)
    return a + (b - a) * w


def _jitter(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
    """(3, n) multiplicative colour jitter: a common brightness change plus a smaller per-channel one."""
    return (1 + amount * rng.standard_normal((1, n)) + 0.25 * amount * rng.standard_normal((3, n))).astype(
        np.float32)


# ---------------------------------------------------------------------------------------------------------------
# kinds


def _noise(spec: TextureSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    n = fractal_noise(rng, size, slope=rng.uniform(0.9, 1.4))
    tint = fractal_noise(rng, size, slope=1.3)
    w = np.clip(0.5 + 0.3 * spec.contrast * n, 0, 1)
    return _mix(spec.color_a, spec.color_b, w) * (1 + 0.06 * spec.contrast * tint)


def _dead_leaves(spec: TextureSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    ss = 2  # drawn at 2x and box-reduced: anti-aliased disc edges
    big = size * ss
    rmax = big / PERIODS["dead_leaves"]
    rmin = rmax / 6
    # Radii with density ~ r^-3 (scale invariance); enough discs to cover the patch about four times over.
    mean_r2 = 2 * rmin**2 * np.log(rmax / rmin) / (1 - (rmin / rmax) ** 2)
    count = int(4 * big * big / (np.pi * mean_r2))
    q = rng.uniform(size=count)
    radii = (rmin**-2 - q * (rmin**-2 - rmax**-2)) ** -0.5
    centres = rng.uniform(0, big, size=(count, 2))
    w = rng.uniform(0, 1, size=count) ** rng.uniform(0.6, 1.6)
    cols = _mix(spec.color_a, spec.color_b, w) * _jitter(rng, count, 0.12 * spec.contrast + 0.02)
    cols = np.clip(cols.T * 255 + 0.5, 0, 255).astype(np.uint8)
    base = np.clip(np.asarray(_mix(spec.color_a, spec.color_b, 0.5)) * 255 + 0.5, 0, 255).astype(np.uint8)
    img = Image.new("RGB", (big, big), tuple(base.tolist()))  # shows only where no disc fell (~2%)
    draw = ImageDraw.Draw(img)
    for (cx, cy), r, c in zip(centres.tolist(), radii.tolist(), cols.tolist()):
        fill = tuple(c)
        # Periodic: a disc crossing an edge is drawn again on the opposite side.
        xs = [0] + ([big] if cx - r < 0 else []) + ([-big] if cx + r > big else [])
        ys = [0] + ([big] if cy - r < 0 else []) + ([-big] if cy + r > big else [])
        for dx in xs:
            for dy in ys:
                draw.ellipse((cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r), fill=fill)
    return np.asarray(img.reduce(ss), dtype=np.float32).transpose(2, 0, 1) / 255.0


def _tiles(spec: TextureSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    rows = PERIODS["tiles"]
    brick = rng.uniform() < 0.4
    cols = rows // 2 if brick else rows
    s = _coords(size)
    y = s[:, None] * rows + np.zeros((1, size), np.float32)
    row = np.floor(y).astype(np.int64) % rows
    x = s[None, :] * cols + (0.5 * (row % 2) if brick else 0.0)
    col = np.floor(x).astype(np.int64) % cols
    grout = rng.uniform(0.02, 0.08)
    fx, fy = cols / size, rows / size
    gxw = grout * cols / rows  # the same grout width in metres on both axes
    gx = _pulse(x + gxw / 2, gxw, fx)
    gy = _pulse(y + grout / 2, grout, fy)
    g = 1 - (1 - gx) * (1 - gy)
    checker = rng.uniform() < 0.3
    pick = ((row + col) % 2).astype(np.float32) if checker else np.zeros_like(y)
    tile = _mix(spec.color_a, spec.color_b, pick * 0.8 * spec.contrast + 0.1 * spec.contrast)
    tile *= _jitter(rng, rows * cols, 0.08 * spec.contrast + 0.01)[:, row * cols + col]
    tile *= 1 + 0.04 * fractal_noise(rng, size, slope=1.2)
    grout_col = np.asarray(random_color(rng, sat=(0.0, 0.15), val=(0.2, 0.8)), dtype=np.float32)[:, None, None]
    return tile + (grout_col - tile) * g


def _planks(spec: TextureSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    rows = PERIODS["planks"]
    per_row = int(rng.integers(1, 4))  # planks along a row, per patch length
    s = _coords(size)
    y = s[:, None] * rows + np.zeros((1, size), np.float32)
    row = np.floor(y).astype(np.int64) % rows
    shift = rng.uniform(0, 1, size=rows).astype(np.float32)
    x = s[None, :] * per_row + shift[row]
    seg = np.floor(x).astype(np.int64) % per_row
    gap = rng.uniform(0.01, 0.04)
    jw = gap * per_row / rows  # joint width in plank-length units, as wide in metres as the gap between rows
    g = 1 - (1 - _pulse(y + gap / 2, gap, rows / size)) * (1 - _pulse(x + jw / 2, jw, per_row / size))
    board = rng.uniform(0, 1, size=rows * per_row)[row * per_row + seg] * spec.contrast
    grain = fractal_noise(rng, size, slope=1.1, stretch=(12.0, 1.0))
    col = _mix(spec.color_a, spec.color_b, np.clip(board + 0.15 * spec.contrast * grain, 0, 1))
    col *= _jitter(rng, rows * per_row, 0.05)[:, row * per_row + seg]
    return col * (1 - 0.6 * g)


def _stripes(spec: TextureSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    n = PERIODS["stripes"]
    bands = int(rng.integers(2, 5))
    widths = rng.dirichlet(np.ones(bands) * 2.0)
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    x = _coords(size) * n
    cover = np.stack([_pulse(x - s0, w, n / size) for s0, w in zip(starts, widths)])  # (bands, size)
    band_w = spec.contrast * (np.arange(bands) % 2 + rng.uniform(-0.1, 0.1, bands))
    band_cols = _mix(spec.color_a, spec.color_b, np.clip(band_w, 0, 1))  # (3, bands)
    line = (band_cols @ cover).astype(np.float32)  # (3, size): stripes run along v (vertical on walls)
    paper = 1 + 0.05 * fractal_noise(rng, size, slope=1.2)
    return line[:, None, :] * paper


def _wood(spec: TextureSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    rings = int(rng.integers(3, 9)) * PERIODS["wood"]
    s = _coords(size)
    warp = fractal_noise(rng, size, slope=2.0, stretch=(6.0, 1.0))  # smooth, elongated: wavy rings along x
    r = s[:, None] * rings + rng.uniform(0.3, 0.8) * warp
    late = (r - np.floor(r)) ** rng.uniform(3, 8)  # dark late-wood line at the end of each ring
    grain = fractal_noise(rng, size, slope=0.9, stretch=(16.0, 1.0))
    w = np.clip(spec.contrast * (0.6 * late + 0.12 * grain) + 0.1, 0, 1)
    return _mix(spec.color_a, spec.color_b, w)


_MAKERS = {"noise": _noise, "dead_leaves": _dead_leaves, "tiles": _tiles, "planks": _planks,
           "stripes": _stripes, "wood": _wood}
