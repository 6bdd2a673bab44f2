"""Foreground cutouts: procedural objects (figures, animals, plants, lamps, chairs, tables, furniture, blobs) and
the user's own RGBA PNG files.

A procedural cutout is built in metres (y up, standing on y = 0) from layers of polygons, each with a material
(a texture from textures.py) and drawn in order. Every layer is rasterised at 4x and box-reduced, so the alpha
has exact soft, anti-aliased edges; colour is shaded by a normal taken from the blurred layer coverage, which gives
parts a rounded look. The result is trimmed to the alpha's bounding box; `height_m` is its height in metres, so
the compositor's perspective rule (height in px = focal_px * height_m / depth) sizes it correctly.

Longer than most modules: most of it is the procedural shape kinds (person, animal, plant, lamp, chair, table,
blob), each a short recipe of layers for the one renderer here; they change together with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskdepth.data.textures import TextureSpec, make_texture, random_color, random_spec
from maskdepth.errors import UserError
from maskdepth.fileio import open_image


@dataclass
class Cutout:
    rgba: np.ndarray  # (h,w,4) uint8, trimmed to the alpha's bounding box, soft anti-aliased alpha
    height_m: float  # nominal real-world height in metres (procedural: by kind; user files: a default)
    name: str  # e.g. "person-0007" or the user file's stem


# Real-world height range (m) and how often each kind is drawn.
KINDS = {
    "person": ((1.4, 1.9), 0.25),
    "animal": ((0.3, 0.8), 0.15),
    "plant": ((0.4, 1.5), 0.12),
    "lamp": ((1.2, 1.8), 0.07),
    "chair": ((0.75, 1.05), 0.1),
    "table": ((0.45, 0.8), 0.06),
    "furniture": ((0.4, 1.8), 0.1),
    "blob": ((0.3, 1.0), 0.15),
    "bicycle": ((0.9, 1.15), 0.08),  # thin rims, see-through wheels and spokes; now and then a person beside it
}

SS = 4  # supersampling per axis for the alpha: 16 samples per pixel


# ---------------------------------------------------------------------------------------------------------------
# user files


def load_cutout(path: str | Path) -> Cutout:
    """One RGBA image file -> Cutout trimmed to its alpha's bounding box (16-bit files are reduced to 8-bit)."""
    path = Path(path)
    img = open_image(path)
    # Alpha is a channel (RGBA, LA, PA; 16-bit files open as 8-bit RGBA) or a transparent colour or palette entry.
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in img.info:
        raise UserError(f"{path}: has no alpha channel; save it as RGBA PNG with a transparent background")
    rgba = np.asarray(img.convert("RGBA"))
    alpha = rgba[..., 3]
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        raise UserError(f"{path}: is fully transparent; the cutout must have opaque pixels where the object is")
    rgba = rgba[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return Cutout(rgba=np.ascontiguousarray(rgba), height_m=1.0, name=path.stem)


def load_cutouts(folder: str | Path, default_height_m: float = 1.0) -> list[Cutout]:
    """Every *.png in `folder` (sorted by name) as a Cutout of height `default_height_m` metres."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: cutout folder not found; give a folder of RGBA PNG files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise UserError(f"{folder}: no .png files; put the cutouts there as RGBA PNGs with transparent "
                        "backgrounds")
    if not default_height_m > 0:
        raise UserError(f"cutout height {default_height_m} m: must be > 0; give a real-world height in metres")
    cutouts = []
    for p in files:
        c = load_cutout(p)
        c.height_m = float(default_height_m)
        cutouts.append(c)
    return cutouts


# ---------------------------------------------------------------------------------------------------------------
# procedural: shapes


@dataclass
class _Layer:
    """Polygons (metres, y up) drawn with one material, minus `holes`; `shade` scales brightness (far limbs,
    side faces)."""

    material: TextureSpec
    polys: list[np.ndarray] = field(default_factory=list)
    shade: float = 1.0
    relief: float = 0.5  # 0 flat .. 1 strongly rounded shading
    holes: list[np.ndarray] = field(default_factory=list)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _capsule(p0, p1, r0: float, r1: float | None = None, n: int = 10) -> np.ndarray:
    """Rounded segment from p0 to p1, radius r0 tapering to r1."""
    r1 = r0 if r1 is None else r1
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    ang = math.atan2(*(p1 - p0)[::-1])
    t = np.linspace(-np.pi / 2, np.pi / 2, n)
    cap1 = p1 + r1 * np.stack([np.cos(ang + t), np.sin(ang + t)], axis=1)
    cap0 = p0 + r0 * np.stack([np.cos(ang + np.pi + t), np.sin(ang + np.pi + t)], axis=1)
    return np.concatenate([cap1, cap0])


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _limb(start, angles, lengths, radii) -> tuple[list[np.ndarray], np.ndarray]:
    """Chain of capsules from `start`; angles are absolute (radians, 0 = straight down, > 0 towards +x)."""
    polys, p = [], np.asarray(start, float)
    for i, (a, length) in enumerate(zip(angles, lengths)):
        q = p + length * np.array([math.sin(a), -math.cos(a)])
        polys.append(_capsule(p, q, radii[i], radii[i + 1]))
        p = q
    return polys, p


def _material(rng: np.random.Generator, kinds=("noise", "stripes", "dead_leaves", "tiles"), scale=(0.02, 0.12),
              sat=(0.05, 0.8), val=(0.15, 0.9), hue=(0.0, 1.0)) -> TextureSpec:
    """A texture for one part: cloth patterns by default; noise gets a larger scale (smooth shading-like)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "noise":
        scale = (0.3, 1.5)
    a = random_color(rng, sat=sat, val=val, hue=hue)
    b = random_color(rng, sat=sat, val=val, hue=hue)
    return random_spec(rng, kind, rng.uniform(*scale), a, b, contrast=(0.2, 0.9))


# Clothes are mostly black, grey, white, navy or denim: a cloth is a near-neutral dark with CLOTH_DARK probability,
# a near-neutral light with CLOTH_LIGHT, else any colour. Dark clothes are what a model that reads every
# darkening as a shadow misses.
CLOTH_DARK, CLOTH_LIGHT = 0.35, 0.15


def _cloth(rng: np.random.Generator) -> TextureSpec:
    r = rng.uniform()
    if r < CLOTH_DARK:
        return _material(rng, sat=(0.0, 0.3), val=(0.03, 0.2))
    if r < CLOTH_DARK + CLOTH_LIGHT:
        return _material(rng, sat=(0.0, 0.12), val=(0.75, 0.97))
    return _material(rng)


def _skin(rng: np.random.Generator) -> TextureSpec:
    return _material(rng, kinds=("noise",), sat=(0.2, 0.55), val=(0.3, 0.95), hue=(0.03, 0.1))


def _wood(rng: np.random.Generator) -> TextureSpec:
    return _material(rng, kinds=("wood", "noise"), scale=(0.05, 0.2), sat=(0.25, 0.7), val=(0.15, 0.8),
                     hue=(0.03, 0.12))


# How people are posed: standing, or seated on a chair (thighs level, shins down), on the floor with the legs out,
# or cross-legged. A seated figure's legs lie level along the floor at its foot, where a standing one has only its
# cast shadow: a model that has seen only standing figures reads dark trousers there as shadow.
POSES = {"standing": 0.7, "chair": 0.12, "legs-out": 0.09, "cross-legged": 0.09}


def _leg_angles(rng: np.random.Generator, pose: str, side: int, face: int) -> tuple[float, float]:
    """(thigh, shin) angles (0 = straight down, > 0 towards +x) of the leg on `side`, the figure facing `face`."""
    if pose == "chair":
        return face * rng.uniform(1.3, 1.75), face * rng.uniform(-0.15, 0.45)
    if pose == "legs-out":
        a0 = face * rng.uniform(1.3, 1.65)
        return a0, a0 + face * rng.normal(0.05, 0.12)
    if pose == "cross-legged":  # thighs out to either side, shins folded back under the other knee
        return side * rng.uniform(1.15, 1.5), -side * rng.uniform(1.35, 1.75)
    a0 = side * rng.uniform(0.0, 0.3) + rng.normal(0, 0.15)
    return a0, a0 - abs(rng.normal(0, 0.25))


def _person(rng: np.random.Generator, height: float) -> list[_Layer]:
    h = height
    pose = str(rng.choice(list(POSES), p=list(POSES.values())))
    face = 1 if rng.uniform() < 0.5 else -1
    head_r = h * rng.uniform(0.058, 0.07)
    shoulder_y, hip_y = h * rng.uniform(0.79, 0.83), h * rng.uniform(0.5, 0.54)
    sw, hw = h * rng.uniform(0.09, 0.13), h * rng.uniform(0.06, 0.09)
    leg = hip_y * 0.5
    arm = (h * 0.18, h * 0.17)
    shirt, trousers, skin = _cloth(rng), _cloth(rng), _skin(rng)
    hair = _material(rng, kinds=("noise",), sat=(0.1, 0.6), val=(0.05, 0.6), hue=(0.02, 0.12))
    shoes = _material(rng, kinds=("noise",), val=(0.05, 0.5))
    short_sleeves, skirt = rng.uniform() < 0.35, pose == "standing" and rng.uniform() < 0.2

    def arm_polys(side):
        up = rng.uniform(1.0, 2.9) if rng.uniform() < 0.2 else rng.normal(0.15, 0.3)  # now and then raised
        a0 = side * abs(up)
        a1 = a0 + side * rng.uniform(-0.2, 1.6) * (1 if rng.uniform() < 0.5 else -1)
        polys, hand = _limb((side * sw * 0.85, shoulder_y - h * 0.02), (a0, a1), arm,
                            (h * 0.03, h * 0.025, h * 0.02))
        return polys, _ellipse(*hand, h * 0.025, h * 0.03)

    def leg_polys(side):
        a0, a1 = _leg_angles(rng, pose, side, face)
        polys, foot = _limb((side * hw * 0.55, hip_y), (a0, a1), (leg, leg), (h * 0.045, h * 0.035, h * 0.028))
        return polys, _ellipse(foot[0] + side * h * 0.02, foot[1] - h * 0.01, h * 0.05, h * 0.022)

    near = 1 if rng.uniform() < 0.5 else -1
    layers = []
    for side, shade in ((-near, 0.8), (near, 1.0)):
        (thigh, shin), foot = leg_polys(side)
        layers.append(_Layer(trousers, [thigh] if skirt else [thigh, shin], shade))
        if skirt:
            layers.append(_Layer(skin, [shin], shade))
        layers.append(_Layer(shoes, [foot], shade))
    waist = hip_y - h * 0.04
    torso = np.array([[-sw, shoulder_y], [sw, shoulder_y], [hw * 1.1, waist], [-hw * 1.1, waist]])
    layers.append(_Layer(skin, [_capsule((0, shoulder_y - h * 0.02), (0, h - 2 * head_r), h * 0.03)]))
    if skirt:
        layers.append(_Layer(trousers, [np.array([[-hw * 1.1, hip_y], [hw * 1.1, hip_y],
                                                  [hw * 2.2, hip_y - h * 0.22], [-hw * 2.2, hip_y - h * 0.22]])]))
    layers.append(_Layer(shirt, [torso, _ellipse(-sw * 0.85, shoulder_y - h * 0.03, h * 0.04, h * 0.04),
                                 _ellipse(sw * 0.85, shoulder_y - h * 0.03, h * 0.04, h * 0.04)]))
    layers.append(_Layer(skin, [_ellipse(0, h - head_r, head_r * 0.85, head_r)]))
    layers.append(_Layer(hair, [_ellipse(0, h - head_r * 0.75, head_r * 0.9, head_r * 0.8)]))
    for side, shade in ((-near, 0.85), (near, 1.0)):
        (upper, lower), hand = arm_polys(side)
        if short_sleeves:
            layers += [_Layer(shirt, [upper], shade), _Layer(skin, [lower, hand], shade)]
        else:
            layers += [_Layer(shirt, [upper, lower], shade), _Layer(skin, [hand], shade)]
    return layers


def _animal(rng: np.random.Generator, height: float) -> list[_Layer]:
    u = height  # geometry in units of the target height; the bbox height is rescaled later
    body_h = u * rng.uniform(0.3, 0.45)
    body_l = body_h * rng.uniform(1.6, 2.6)
    leg_l = u * rng.uniform(0.3, 0.5)
    body_y = leg_l + body_h * 0.4
    fur = _material(rng, kinds=("noise", "dead_leaves", "stripes"), scale=(0.02, 0.08), sat=(0.0, 0.6),
                    val=(0.05, 0.85), hue=(0.02, 0.14))
    layers = []
    for shade, dx in ((0.75, 0.06), (1.0, 0.0)):
        polys = []
        for x in (-body_l * 0.36 + dx * body_l, body_l * 0.36 + dx * body_l):
            a0 = rng.normal(0, 0.25)
            (p0, p1), _ = _limb((x, body_y), (a0, a0 + rng.normal(0, 0.3)), (leg_l * 0.55, leg_l * 0.55),
                                (body_h * 0.16, body_h * 0.11, body_h * 0.08))
            polys += [p0, p1]
        layers.append(_Layer(fur, polys, shade))
    neck_top = (body_l * 0.55, body_y + body_h * rng.uniform(0.5, 1.2))
    head_r = body_h * rng.uniform(0.3, 0.45)
    tail_a = rng.uniform(-2.5, -0.6)
    tail, _ = _limb((-body_l * 0.48, body_y + body_h * 0.2), (tail_a, tail_a + rng.normal(0, 0.5)),
                    (body_l * 0.2, body_l * 0.2), (body_h * 0.07, body_h * 0.05, body_h * 0.02))
    ear = np.asarray(neck_top) + head_r * np.array([[-0.5, 0.5], [-0.1, 0.7], [-0.35, rng.uniform(1.1, 1.8)]])
    layers.append(_Layer(fur, [_ellipse(0, body_y, body_l / 2, body_h / 2),
                               _capsule((body_l * 0.35, body_y), neck_top, body_h * 0.25, head_r * 0.6)] + tail))
    layers.append(_Layer(fur, [_ellipse(*neck_top, head_r, head_r * 0.85),
                               _ellipse(neck_top[0] + head_r * 0.9, neck_top[1] - head_r * 0.3, head_r * 0.7,
                                        head_r * 0.45), ear]))
    return layers


def _plant(rng: np.random.Generator, height: float) -> list[_Layer]:
    pot_h = height * rng.uniform(0.15, 0.3)
    pot_w = pot_h * rng.uniform(0.6, 1.1)
    pot = np.array([[-pot_w / 2, pot_h], [pot_w / 2, pot_h], [pot_w * 0.35, 0], [-pot_w * 0.35, 0]])
    green = (0.2, 0.45)
    stem_mat = _material(rng, kinds=("noise",), sat=(0.3, 0.7), val=(0.15, 0.5), hue=(0.05, 0.3))
    leaf_mat = _material(rng, kinds=("noise", "dead_leaves"), scale=(0.01, 0.04), sat=(0.3, 0.9),
                         val=(0.15, 0.7), hue=green)
    stems, leaves = [], []
    reach = height - pot_h
    depth = int(rng.integers(2, 5))

    def grow(p, angle, length, width, level):
        q = p + length * np.array([math.sin(angle), math.cos(angle)])
        stems.append(_capsule(p, q, width, width * 0.7))
        if level == depth:
            size = reach * rng.uniform(0.06, 0.12)
            for _ in range(int(rng.integers(1, 4))):
                a = angle + rng.normal(0, 0.7)
                c = q + size * 0.8 * np.array([math.sin(a), math.cos(a)])
                leaves.append(_ellipse(*c, size, size * rng.uniform(0.25, 0.5), math.pi / 2 - a, n=24))
            return
        for _ in range(int(rng.integers(2, 4))):
            grow(q, angle + rng.uniform(-0.7, 0.7), length * rng.uniform(0.55, 0.8), width * 0.7, level + 1)

    base_len = reach / sum(0.68**i for i in range(depth + 1)) * 0.8
    grow(np.array([0.0, pot_h * 0.9]), rng.normal(0, 0.15), base_len, height * rng.uniform(0.008, 0.02), 0)
    pot_mat = _material(rng, kinds=("noise", "stripes", "tiles"), scale=(0.01, 0.05))
    return [_Layer(stem_mat, stems, relief=0.2), _Layer(leaf_mat, leaves, relief=0.3), _Layer(pot_mat, [pot])]


def _lamp(rng: np.random.Generator, height: float) -> list[_Layer]:
    metal = _material(rng, kinds=("noise",), sat=(0.0, 0.3), val=(0.05, 0.9))
    fabric = _material(rng, kinds=("noise", "stripes"), scale=(0.01, 0.04), sat=(0.0, 0.5), val=(0.5, 0.98))
    pole_r = rng.uniform(0.008, 0.02)
    shade_h = height * rng.uniform(0.15, 0.25)
    shade_w = shade_h * rng.uniform(0.8, 1.6)
    top = height - shade_h * 0.8
    base_r = rng.uniform(0.12, 0.25)
    x_top = rng.uniform(-0.3, 0.3) * height if rng.uniform() < 0.3 else 0.0  # now and then a bent arm
    pole = [_capsule((0, 0.02), (0, top * 0.7), pole_r), _capsule((0, top * 0.7), (x_top, top), pole_r)]
    base = _ellipse(0, 0.02, base_r, 0.025)
    shade = np.array([[x_top - shade_w * 0.35, height], [x_top + shade_w * 0.35, height],
                      [x_top + shade_w / 2, height - shade_h], [x_top - shade_w / 2, height - shade_h]])
    return [_Layer(metal, pole + [base], relief=0.8), _Layer(fabric, [shade], relief=0.2)]


def _chair(rng: np.random.Generator, height: float) -> list[_Layer]:
    """Side view (back post tilted, four legs) or front view (backrest frame with see-through gaps)."""
    wood = _wood(rng)
    seat_y = height * rng.uniform(0.42, 0.52)
    half = rng.uniform(0.19, 0.25)  # half the seat's depth (side view) or width (front view)
    leg = rng.uniform(0.015, 0.04)
    legs = [_rect(-half, 0, -half + leg, seat_y), _rect(half - leg, 0, half, seat_y)]
    far = [_rect(-half + 0.03, 0, -half + 0.03 + leg, seat_y), _rect(half - 0.03 - leg, 0, half - 0.03, seat_y)]
    seat = _rect(-half - 0.01, seat_y - rng.uniform(0.02, 0.07), half + 0.01, seat_y)
    if rng.uniform() < 0.4:
        back = [_rect(-half, seat_y, -half + leg, height), _rect(half - leg, seat_y, half, height)]
        for _ in range(int(rng.integers(1, 3))):  # rails across, gaps between them
            y = rng.uniform(seat_y + 0.1, height - 0.05)
            back.append(_rect(-half, y, half, min(y + rng.uniform(0.03, 0.12), height)))
    else:
        tilt = rng.uniform(0.0, 0.12)
        back = [np.array([[-half, seat_y], [-half + leg * 1.5, seat_y], [-half - tilt + leg * 1.5, height],
                          [-half - tilt, height]])]
    cushion = _material(rng, kinds=("noise", "stripes", "tiles"))
    return [_Layer(wood, far, 0.7, relief=0.1), _Layer(wood, legs + back, relief=0.2),
            _Layer(cushion if rng.uniform() < 0.4 else wood, [seat], relief=0.2)]


def _table(rng: np.random.Generator, height: float) -> list[_Layer]:
    wood = _wood(rng)
    width = height * rng.uniform(0.8, 2.2)
    top_t = rng.uniform(0.02, 0.06)
    leg = rng.uniform(0.03, 0.07)
    inset = rng.uniform(0.0, 0.1) * width
    legs = [_rect(-width / 2 + inset, 0, -width / 2 + inset + leg, height),
            _rect(width / 2 - inset - leg, 0, width / 2 - inset, height)]
    layers = [_Layer(wood, legs, relief=0.2), _Layer(wood, [_rect(-width / 2, height - top_t, width / 2, height)],
                                                    relief=0.1)]
    if rng.uniform() < 0.4:  # stretcher between the legs
        y = height * rng.uniform(0.15, 0.3)
        layers.append(_Layer(wood, [_rect(-width / 2 + inset, y, width / 2 - inset, y + leg * 0.6)], 0.9, 0.1))
    return layers


def _furniture(rng: np.random.Generator, height: float) -> list[_Layer]:
    """A cabinet or an open shelf, in oblique view: front face, top and side faces shaded differently."""
    mat = _wood(rng) if rng.uniform() < 0.6 else _material(rng, kinds=("noise", "tiles"), scale=(0.05, 0.3))
    w = height * rng.uniform(0.4, 1.5)
    dx, dy = rng.uniform(0.1, 0.3) * w * (1 if rng.uniform() < 0.5 else -1), rng.uniform(0.05, 0.15) * height
    side_x = w if dx > 0 else 0.0
    top = np.array([[0, height], [w, height], [w + dx, height + dy], [dx, height + dy]])
    side = np.array([[side_x, 0], [side_x + dx, dy], [side_x + dx, height + dy], [side_x, height]])
    if rng.uniform() < 0.5:
        front = [_rect(0, 0, w, height)]
    else:  # open shelf: a frame with boards, see-through between them
        t = rng.uniform(0.02, 0.04)
        boards = int(rng.integers(2, 6))
        front = [_rect(0, 0, t, height), _rect(w - t, 0, w, height)]
        front += [_rect(0, y, w, y + t) for y in np.linspace(0, height - t, boards)]
    return [_Layer(mat, [side], 0.7, 0.0), _Layer(mat, [top], 1.15, 0.0), _Layer(mat, front, 1.0, 0.1)]


def _bicycle(rng: np.random.Generator, height: float) -> list[_Layer]:
    """Side view, turned by up to 50 degrees (wheels become ellipses): tyres with see-through centres, spokes a few
    millimetres thin (sub-pixel: soft alpha), a tube frame; half the time a person stands behind it."""
    k = height / 1.05  # the frame below is drawn for a bicycle 1.05 m high at the handlebar
    r = rng.uniform(0.3, 0.36) * k
    half = rng.uniform(1.45, 1.65) * r
    squeeze = math.cos(rng.uniform(0, math.radians(50)))
    tyre_w = rng.uniform(0.025, 0.05) * k
    tube = rng.uniform(0.012, 0.022) * k
    frame_mat = _material(rng, kinds=("noise",), sat=(0.2, 0.9), val=(0.1, 0.9))
    tyre_mat = _material(rng, kinds=("noise",), sat=(0.0, 0.2), val=(0.02, 0.25))
    spoke_mat = _material(rng, kinds=("noise",), sat=(0.0, 0.1), val=(0.4, 0.9))
    rear, front = np.array([-half, r]), np.array([half, r])
    bb = np.array([-0.1 * half, r * rng.uniform(0.85, 1.0)])
    seat = np.array([-0.45 * half, r + rng.uniform(0.5, 0.6) * k])
    head = np.array([0.7 * half, r + rng.uniform(0.45, 0.55) * k])
    bar = head + np.array([-0.08, 0.12]) * k
    tubes = [_capsule(a, b, tube) for a, b in ((rear, bb), (rear, seat), (bb, seat), (bb, head), (seat, head),
                                              (head, front), (head, bar))]
    tubes += [_capsule(bar - [0.06 * k, 0], bar + [0.04 * k, 0], tube * 1.3),
              _ellipse(*(seat + [0, 0.025 * k]), 0.11 * k, 0.025 * k)]
    tyres, spokes = [], []
    n_spokes = int(rng.choice([0, 8, 12, 16], p=[0.25, 0.25, 0.25, 0.25]))
    thin = rng.uniform(0.0015, 0.004) * k
    for hub in (rear, front):
        tyres.append((_ellipse(*hub, r, r), _ellipse(*hub, r - tyre_w, r - tyre_w)))
        offset = rng.uniform(0, math.pi)
        for i in range(n_spokes):
            t = offset + math.pi * i / max(n_spokes, 1) * 2
            spokes.append(_capsule(hub, hub + (r - tyre_w) * np.array([math.cos(t), math.sin(t)]), thin))
        spokes.append(_ellipse(*hub, 0.03 * k, 0.03 * k))
    layers = []
    if rng.uniform() < 0.5:
        beside = _person(rng, float(rng.uniform(1.4, 1.9)))
        dx = rng.uniform(-0.6, 0.6) * half
        for layer in beside:
            layer.polys = [p + [dx, 0] for p in layer.polys]
            layer.shade *= 0.9
        layers += beside
    layers += [_Layer(tyre_mat, [outer], relief=0.3, holes=[inner]) for outer, inner in tyres]
    if spokes:
        layers.append(_Layer(spoke_mat, spokes, relief=0.1))
    layers.append(_Layer(frame_mat, tubes, relief=0.6))
    for layer in layers:  # turned away from the side view: every x shrinks towards the middle
        layer.polys = [p * [squeeze, 1.0] for p in layer.polys]
        layer.holes = [p * [squeeze, 1.0] for p in layer.holes]
    return layers


def _star(rng: np.random.Generator, rough: float, n: int = 160) -> np.ndarray:
    """A closed curve whose radius is a smooth random function of angle, around (0, 0) with radius about 1."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 12):
        r += rough * rng.normal(0, 1) / k**1.3 * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.maximum(r, 0.15)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _blob(rng: np.random.Generator, height: float) -> list[_Layer]:
    """Star-shaped outline, now and then with holes through it (stones, bags, sculptures, bushes)."""
    aspect = rng.uniform(0.5, 1.8)
    poly = _star(rng, rng.uniform(0.1, 0.5)) * [aspect, 1.0]
    holes = [_star(rng, 0.3, 48) * rng.uniform(0.08, 0.2) * [aspect, 1.0] + rng.uniform(-0.35, 0.35, 2) * [aspect, 1]
             for _ in range(int(rng.integers(1, 4)) if rng.uniform() < 0.35 else 0)]
    y0, scale = poly[:, 1].min(), height / np.ptp(poly[:, 1])
    poly = (poly - [0, y0]) * scale  # standing on y = 0, `height` tall
    holes = [(p - [0, y0]) * scale for p in holes]
    mat = _material(rng, kinds=("noise", "dead_leaves", "stripes", "tiles", "wood"), scale=(0.02, 0.2))
    return [_Layer(mat, [poly], relief=rng.uniform(0.4, 1.0), holes=holes)]


_SHAPES = {"person": _person, "animal": _animal, "plant": _plant, "lamp": _lamp, "chair": _chair,
           "table": _table, "furniture": _furniture, "blob": _blob,
           "bicycle": _bicycle}


# ---------------------------------------------------------------------------------------------------------------
# procedural: rendering


def procedural_cutout(rng: np.random.Generator, size: int = 128, kinds: Sequence[str] | None = None) -> Cutout:
    """A random textured, shaded object with soft alpha, `size` px on its longest side (the last pixel row or
    column may be lost to trimming), of one of `kinds` (default: every kind in KINDS, at their weights).
    Deterministic from `rng`."""
    names = list(KINDS) if kinds is None else [k for k in KINDS if k in kinds]
    probs = np.array([KINDS[k][1] for k in names])
    kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    height = float(rng.uniform(*KINDS[kind][0]))
    layers = _SHAPES[kind](rng, height)
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.2, 0.8), 1.0])  # x right, y up, z to the viewer
    rgba, px_m = _render(layers, size, light / np.linalg.norm(light), rng.uniform(0.35, 0.6))
    name = f"{kind}-{int(rng.integers(10000)):04d}"
    return Cutout(rgba=rgba, height_m=round(rgba.shape[0] * px_m, 4), name=name)


def _box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, zeros outside: cumulative sums, cost independent of r."""
    if r < 1:
        return a
    out = a
    for axis in (0, 1):
        c = np.cumsum(np.pad(out, [(r + 1, r) if i == axis else (0, 0) for i in range(2)]), axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = (hi - lo) / (2 * r + 1)
    return out


def _render(layers: list[_Layer], size: int, light: np.ndarray, ambient: float) -> tuple[np.ndarray, float]:
    """Rasterise layers into a trimmed (h, w, 4) uint8 image; returns it and the metres per pixel."""
    pts = np.concatenate([p for layer in layers for p in layer.polys])
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    scale = (size - 1) / max(x1 - x0, y1 - y0)  # px per metre
    cw, ch = int(math.ceil((x1 - x0) * scale)) + 2, int(math.ceil((y1 - y0) * scale)) + 2
    px_m = 1.0 / scale
    union = Image.new("L", (cw * SS, ch * SS), 0)
    acc = np.zeros((3, ch, cw), np.float32)
    weight = np.zeros((ch, cw), np.float32)
    texels = 128 if size <= 256 else 256
    textures = {}
    for layer in layers:
        # Pixel coordinates (y down) of this layer, and the window it touches (plus room for the shading blur).
        polys, holes = ([np.stack([(p[:, 0] - x0) * scale + 1, (y1 - p[:, 1]) * scale + 1], axis=1) for p in ps]
                        for ps in (layer.polys, layer.holes))
        lp = np.concatenate(polys)
        blur = max(1, int(round(min(np.ptp(lp[:, 0]), np.ptp(lp[:, 1])) * 0.15 * layer.relief)))
        c0 = max(int(lp[:, 0].min()) - blur - 1, 0)
        r0 = max(int(lp[:, 1].min()) - blur - 1, 0)
        c1 = min(int(math.ceil(lp[:, 0].max())) + blur + 1, cw)
        r1 = min(int(math.ceil(lp[:, 1].max())) + blur + 1, ch)
        mask = Image.new("L", ((c1 - c0) * SS, (r1 - r0) * SS), 0)
        draw = ImageDraw.Draw(mask)
        for p, fill in [(p, 255) for p in polys] + [(p, 0) for p in holes]:
            draw.polygon([((x - c0) * SS, (y - r0) * SS) for x, y in p.tolist()], fill=fill)
        union.paste(255, (c0 * SS, r0 * SS), mask)
        cover = np.asarray(mask.reduce(SS), np.float32) / 255.0
        # Colour: the material at the pixel's position in metres, shaded by a normal from the blurred coverage.
        rows = (np.arange(r0, r1, dtype=np.float32) + 0.5 - 1)[:, None]
        cols = (np.arange(c0, c1, dtype=np.float32) + 0.5 - 1)[None, :]
        u, v = np.broadcast_arrays(cols * px_m + x0, y1 - rows * px_m)
        if layer.material not in textures:
            textures[layer.material] = make_texture(layer.material, texels)
        colour = textures[layer.material].sample(u, v, px_m)
        hgt = _box_blur(_box_blur(cover, blur), blur)
        gy, gx = np.gradient(hgt)
        k = 0.6 * layer.relief * blur
        nx, ny, nz = -gx * k, gy * k, np.ones_like(gx)  # y flips: image rows grow downwards
        lambert = (nx * light[0] + ny * light[1] + nz * light[2]) / np.sqrt(nx * nx + ny * ny + 1)
        shade = layer.shade * (ambient + (1 - ambient) * np.clip(lambert, 0, 1))
        acc[:, r0:r1, c0:c1] += (colour * shade - acc[:, r0:r1, c0:c1]) * cover
        weight[r0:r1, c0:c1] += (1 - weight[r0:r1, c0:c1]) * cover
    alpha = np.asarray(union.reduce(SS))
    # Objects are a little darker towards the floor (occlusion near the contact).
    ground = 1 - 0.25 * np.exp(-(ch - 1 - np.arange(ch, dtype=np.float32)) / (0.1 * ch))[:, None]
    rgb = acc / np.maximum(weight, 1e-6) * ground
    rgb = np.where(alpha > 0, np.clip(rgb * 255 + 0.5, 0, 255), 0).astype(np.uint8)
    rgba = np.concatenate([rgb.transpose(1, 2, 0), alpha[..., None]], axis=2)
    rows_on = np.flatnonzero(alpha.any(axis=1))
    cols_on = np.flatnonzero(alpha.any(axis=0))
    rgba = rgba[rows_on[0]:rows_on[-1] + 1, cols_on[0]:cols_on[-1] + 1]
    return np.ascontiguousarray(rgba), px_m
