"""Procedural rooms: a pinhole camera inside a box room, rendered with exact per-pixel depth and a floor mask.

World frame: x along the room's width, y along its length, z up; the room is the box [0, width] x [0, length] x
[0, height] (floor z = 0, ceiling z = height). The camera stands at (cam_x, cam_y, cam_height), turned by `yaw`
about z (yaw 0 looks along +y) and tilted down by `pitch`. Pixel (row r, col c) has its centre at
(c + 0.5, r + 0.5); the principal point is the image centre and the focal length is
focal_px = (H / 2) / tan(vfov / 2).

Depth is z-depth: the distance of the hit point along the camera's optical axis (not along the ray), the
convention of depth maps. It comes from exact ray/plane intersection; the box is closed, so every pixel hits a
surface and depth > 0 everywhere. The floor mask marks pixels whose ray hits the floor plane first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from maskdepth.data.textures import Texture, TextureSpec, make_texture, random_color, random_spec


@dataclass
class Background:
    """An empty scene: a procedural room or a user's photo (whose depth may be 0 = unknown)."""

    image: np.ndarray  # (H,W,3) uint8
    depth: np.ndarray  # (H,W) float32, metres, z-depth along the camera's optical axis (0 = unknown)
    floor: np.ndarray  # (H,W) bool: floor pixels (where an object may stand)
    focal_px: float  # focal length in pixels: an object h metres tall at depth d is focal_px * h / d px tall


@dataclass(frozen=True)
class RoomParams:
    """Everything that defines one room, its camera, surfaces and light. JSON-able via dataclasses.asdict;
    `RoomParams.from_dict` reads it back."""

    width: float  # room size in metres: x extent
    length: float  # y extent
    height: float  # z extent (floor to ceiling)
    cam_x: float  # camera position in the room (m)
    cam_y: float
    cam_height: float  # above the floor (m)
    pitch: float  # radians, > 0 looks down
    yaw: float  # radians about z; 0 looks along +y
    vfov: float  # vertical field of view (radians)
    floor: TextureSpec
    walls: TextureSpec
    ceiling: TextureSpec
    skirting_m: float  # skirting board height on the walls (0: none)
    skirting_color: tuple[float, float, float]
    # Doors and windows: rectangles painted on the walls in order, each (u0, u1, z0, z1, r, g, b[, glow]), u being
    # the distance along the walls from the corner (0, 0) going +x first (as the wall texture's u), z the height.
    # A glow > 0 makes the rectangle a bright window: its colour times glow in display values, unlit by the room
    # and never dimmed by exposure, so above 1 it clips as an over-exposed window does.
    wall_rects: tuple[tuple[float, ...], ...]
    light_x: float  # point light position (m)
    light_y: float
    light_z: float
    light_power: float  # direct light strength relative to the ambient term
    light_falloff_m: float  # distance at which the direct light has fallen to half
    ambient: float
    light_tint: tuple[float, float, float]  # white balance of the light, RGB multipliers
    occlusion: float  # 0..1: darkening where surfaces meet (ambient occlusion in corners)
    vignette: float  # 0..1: darkening towards the image corners
    exposure: float  # mean brightness of the rendered image, 0..1
    floor_gloss: float = 0.0  # strength of the light's specular highlight on the floor (0: matte)
    floor_shininess: float = 50.0  # Blinn-Phong exponent of that highlight: larger is a smaller, sharper spot

    @classmethod
    def from_dict(cls, d: dict) -> RoomParams:
        kw = {}
        for f in fields(cls):
            if f.name not in d:  # a field added later: its default
                continue
            value = d[f.name]
            if f.name in ("floor", "walls", "ceiling"):
                value = TextureSpec.from_dict(value)
            elif f.name == "wall_rects":
                value = tuple(tuple(r) for r in value)
            elif isinstance(value, list):
                value = tuple(value)
            kw[f.name] = value
        return cls(**kw)


# ---------------------------------------------------------------------------------------------------------------
# sampling

MAX_PITCH = math.radians(35.0)
# Rooms are at most 10 x 10 x 4 m (sample_room), so no z-depth exceeds the room's diagonal. Procedural datasets
# all record one depth bound from this, so models trained on different ones predict on the same scale.
MAX_DEPTH_M = math.sqrt(10.0**2 + 10.0**2 + 4.0**2)
_FLOOR_KINDS = (("planks", 0.3), ("tiles", 0.25), ("wood", 0.15), ("noise", 0.15), ("dead_leaves", 0.15))
_WALL_KINDS = (("noise", 0.4), ("stripes", 0.25), ("tiles", 0.2), ("dead_leaves", 0.15))
_CEILING_KINDS = (("noise", 0.8), ("tiles", 0.2))
# Feature size range (m) per kind: see TextureSpec.scale.
_SCALES = {"noise": (1.0, 4.0), "dead_leaves": (0.05, 0.4), "tiles": (0.15, 0.6), "planks": (0.08, 0.25),
           "stripes": (0.03, 0.4), "wood": (0.2, 0.6)}


def _pick(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names, probs = zip(*table)
    return names[int(rng.choice(len(names), p=np.array(probs) / sum(probs)))]


def _surface(rng: np.random.Generator, table, sat, val, contrast) -> TextureSpec:
    """A texture for one surface: its two colours share a hue family (wood hues for wood)."""
    kind = _pick(rng, table)
    if kind in ("planks", "wood"):
        sat, val, hue = (0.25, 0.7), (0.2, 0.8), rng.uniform(0.02, 0.12)
    else:
        hue = rng.uniform(0.0, 1.0)
    a = random_color(rng, sat=sat, val=val, hue=(hue, hue))
    b = random_color(rng, sat=sat, val=val, hue=(hue - 0.08, hue + 0.08))
    return random_spec(rng, kind, rng.uniform(*_SCALES[kind]), a, b, contrast=contrast)


def _openings(rng: np.random.Generator, width: float, length: float, height: float) -> tuple[tuple, tuple]:
    """Up to one door and two windows, each on its own wall, each a framed panel (two wall rectangles).
    Returns the rectangles and, per rectangle, whether it is a window's pane."""
    starts = (0.0, width, width + length, 2 * width + length)
    walls = (width, length, width, length)
    rects, panes = [], []
    kinds = ["door"] * int(rng.integers(0, 2)) + ["window"] * int(rng.integers(0, 3))
    for kind, k in zip(kinds, rng.permutation(4)):
        if kind == "door":
            w, z0, z1 = rng.uniform(0.75, 1.0), 0.0, min(rng.uniform(1.95, 2.2), height - 0.15)
            panel = random_color(rng, sat=(0.0, 0.5), val=(0.2, 0.9))
        else:
            z0 = rng.uniform(0.7, 1.1)
            w, z1 = rng.uniform(0.6, 2.0), min(z0 + rng.uniform(0.9, 1.6), height - 0.2)
            panel = random_color(rng, sat=(0.0, 0.35), val=(0.75, 1.0), hue=(0.5, 0.65))
        if walls[k] < w + 0.6:
            continue
        u0 = starts[k] + rng.uniform(0.3, walls[k] - w - 0.3)
        frame_m = rng.uniform(0.03, 0.09)
        frame = random_color(rng, sat=(0.0, 0.2), val=(0.3, 1.0))
        rects.append((u0 - frame_m, u0 + w + frame_m, max(z0 - frame_m, 0.0), z1 + frame_m, *frame))
        rects.append((u0, u0 + w, z0, z1, *panel))
        panes += [False, kind == "window"]
    return tuple(tuple(round(float(x), 4) for x in r) for r in rects), tuple(panes)


def sample_room(rng: np.random.Generator) -> RoomParams:
    """Draw a random room, camera, surfaces and light."""
    width, length = (round(float(x), 4) for x in rng.uniform(3.0, 10.0, size=2))
    height = round(float(rng.uniform(2.4, 4.0)), 4)
    cam_height = float(rng.uniform(1.0, min(2.2, height - 0.3)))
    pitch, vfov = math.radians(rng.uniform(5.0, 35.0)), math.radians(rng.uniform(45.0, 75.0))
    margin = 0.3
    for _ in range(100):
        yaw = float(rng.uniform(-math.pi, math.pi))
        # Stand back from the room's centre, against the view direction, so the camera looks across the room.
        back, side = rng.uniform(0.2, 0.9), rng.uniform(-0.4, 0.4)
        fx, fy = math.sin(yaw), math.cos(yaw)
        cam_x = float(np.clip(width / 2 + (-back * fx + side * fy) * (width / 2 - margin), margin, width - margin))
        cam_y = float(np.clip(length / 2 + (-back * fy - side * fx) * (length / 2 - margin), margin,
                              length - margin))
        # Keep at least ~30% of the view on the floor (room to stand objects): the floor's far edge straight
        # ahead is atan(cam_height / ahead) below level; tilt further down if needed, else draw another place.
        ahead = min((width - cam_x) / fx if fx > 0 else -cam_x / fx if fx < 0 else math.inf,
                    (length - cam_y) / fy if fy > 0 else -cam_y / fy if fy < 0 else math.inf)
        needed = math.atan2(cam_height, ahead) - vfov / 2 + 0.3 * vfov
        if needed <= MAX_PITCH:
            pitch = max(pitch, needed)
            break
    floor = _surface(rng, _FLOOR_KINDS, sat=(0.0, 0.6), val=(0.15, 0.8), contrast=(0.3, 0.9))
    walls = _surface(rng, _WALL_KINDS, sat=(0.0, 0.45), val=(0.4, 0.95), contrast=(0.2, 0.8))
    ceiling = _surface(rng, _CEILING_KINDS, sat=(0.0, 0.12), val=(0.7, 0.97), contrast=(0.05, 0.3))
    t = rng.uniform(-0.15, 0.15)
    skirting_m = round(float(rng.uniform(0.05, 0.15)) if rng.uniform() < 0.6 else 0.0, 4)
    skirting_color = random_color(rng, sat=(0.0, 0.3), val=(0.2, 0.95))
    rects, panes = _openings(rng, width, length, height)
    light = dict(
        light_x=round(float(rng.uniform(0.15, 0.85) * width), 4),
        light_y=round(float(rng.uniform(0.15, 0.85) * length), 4),
        light_z=round(float(height - rng.uniform(0.05, 0.6)), 4),
        light_power=round(float(rng.uniform(0.5, 2.0)), 4),
        light_falloff_m=round(float(rng.uniform(2.0, 6.0)), 4),
        ambient=round(float(rng.uniform(0.15, 0.6)), 4),
        light_tint=(round(1 + t, 4), 1.0, round(1 - t, 4)),
        occlusion=round(float(rng.uniform(0.15, 0.6)), 4),
        vignette=round(float(rng.uniform(0.0, 0.35)), 4),
        exposure=round(float(rng.uniform(0.3, 0.6)), 4),
    )
    # drawn last, so the rooms of earlier versions keep everything else: bright windows in 60% of rooms (glow
    # 1 .. 2.5: most clip), a glossy floor in 40%
    glow = round(float(rng.uniform(1.0, 2.5)), 4) if rng.uniform() < 0.6 else 0.0
    gloss = round(float(rng.uniform(0.2, 1.0)), 4) if rng.uniform() < 0.4 else 0.0
    shininess = round(float(np.exp(rng.uniform(math.log(20), math.log(300)))), 2)
    return RoomParams(
        width=width, length=length, height=height,
        cam_x=round(cam_x, 4), cam_y=round(cam_y, 4), cam_height=round(cam_height, 4),
        pitch=round(pitch, 5), yaw=round(yaw, 5), vfov=round(vfov, 5),
        floor=floor, walls=walls, ceiling=ceiling,
        skirting_m=skirting_m, skirting_color=skirting_color,
        wall_rects=tuple(r + (glow,) if pane and glow > 0 else r for r, pane in zip(rects, panes)),
        **light, floor_gloss=gloss, floor_shininess=shininess,
    )


# ---------------------------------------------------------------------------------------------------------------
# geometry


def focal_px(params: RoomParams, size: tuple[int, int]) -> float:
    """Focal length in pixels of a size = (H, W) render."""
    return (size[0] / 2) / math.tan(params.vfov / 2)


def _basis(params: RoomParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera forward, right and up unit vectors in world coordinates."""
    cy, sy = math.cos(params.yaw), math.sin(params.yaw)
    cp, sp = math.cos(params.pitch), math.sin(params.pitch)
    forward = np.array([sy * cp, cy * cp, -sp])
    right = np.array([cy, -sy, 0.0])
    up = np.array([sy * sp, cy * sp, cp])
    return forward, right, up


@dataclass
class _Hits:
    t: np.ndarray  # z-depth (the ray's forward component is 1, so the ray parameter is the z-depth)
    axis: np.ndarray  # 0, 1, 2: which pair of planes (x = const, y = const, z = const) the ray hits first
    d: tuple[np.ndarray, np.ndarray, np.ndarray]  # ray direction components
    a: np.ndarray  # horizontal image-plane offset (c + 0.5 - W/2) / f
    b: np.ndarray  # vertical image-plane offset (r + 0.5 - H/2) / f, > 0 below the centre
    f: float


def _trace(params: RoomParams, size: tuple[int, int], rows, cols) -> _Hits:
    height, width = size
    f = focal_px(params, size)
    a = ((np.asarray(cols, dtype=np.float32) + 0.5 - width / 2) / f).astype(np.float32)
    b = ((np.asarray(rows, dtype=np.float32) + 0.5 - height / 2) / f).astype(np.float32)
    a, b = np.broadcast_arrays(a, b)
    forward, right, up = (v.astype(np.float32) for v in _basis(params))
    cam = (params.cam_x, params.cam_y, params.cam_height)
    box = (params.width, params.length, params.height)
    d = tuple(forward[i] + a * right[i] - b * up[i] for i in range(3))
    t = None
    axis = None
    with np.errstate(divide="ignore"):
        for i in range(3):
            ti = (np.where(d[i] > 0, np.float32(box[i]), np.float32(0.0)) - np.float32(cam[i])) / d[i]
            ti = np.where(d[i] == 0, np.float32(np.inf), ti)
            if t is None:
                t, axis = ti, np.zeros(ti.shape, np.int8)
            else:
                nearer = ti < t
                t = np.where(nearer, ti, t)
                axis = np.where(nearer, np.int8(i), axis)
    return _Hits(t=t.astype(np.float32), axis=axis, d=d, a=a, b=b, f=f)


def ray_depth(params: RoomParams, size: tuple[int, int], rows, cols) -> np.ndarray:
    """Exact z-depth (metres, float32) at pixels (rows, cols) of a size = (H, W) render (broadcastable
    integer arrays)."""
    return _trace(params, size, rows, cols).t


# ---------------------------------------------------------------------------------------------------------------
# rendering


def _texels_for(patch_m: float, finest_m: float, size: tuple[int, int]) -> int:
    """Texture resolution: about one texel per pixel where the surface is seen closest (`finest_m` is the smallest
    pixel footprint on it), at least 64 and at most a cap set by the render size (beyond it, texels magnify)."""
    cap = 128 if max(size) <= 128 else 256 if max(size) <= 320 else 512
    return int(min(cap, max(64, 2 ** math.ceil(math.log2(max(patch_m / finest_m, 1.0))))))


def render_room(params: RoomParams, size: tuple[int, int]) -> Background:
    """Render the room at size = (H, W): image, exact z-depth, floor mask and focal length. Same params and size
    give the same bytes."""
    height, width = size
    hits = _trace(params, size, np.arange(height)[:, None], np.arange(width)[None, :])
    t, axis, d = hits.t, hits.axis, hits.d
    cam = (params.cam_x, params.cam_y, params.cam_height)
    p = [np.float32(cam[i]) + t * d[i] for i in range(3)]  # hit points
    # Snap the hit coordinate onto its plane (exact there, and no float drift past the room's edges).
    box = (params.width, params.length, params.height)
    for i in range(3):
        on = axis == i
        p[i] = np.where(on, np.where(d[i] > 0, np.float32(box[i]), np.float32(0.0)), p[i])
    floor = (axis == 2) & (d[2] < 0)
    ceiling = (axis == 2) & (d[2] > 0)

    fp = _footprint(params, hits)
    albedo = np.empty((3, height, width), np.float32)
    W, L = params.width, params.length
    # Walls share one texture whose u runs around the room (continuous at corners), v is height.
    wall_u = np.select(
        [(axis == 1) & (d[1] < 0), (axis == 0) & (d[0] > 0), (axis == 1) & (d[1] > 0)],
        [p[0], W + p[1], W + L + (W - p[0])],
        2 * W + L + (L - p[1]),
    )
    for mask, spec, u, v in (
        (floor, params.floor, p[0], p[1]),
        (ceiling, params.ceiling, p[0], p[1]),
        (axis != 2, params.walls, wall_u, p[2]),
    ):
        idx = np.flatnonzero(mask)
        if idx.size:
            footprint = fp.ravel()[idx]
            tex: Texture = make_texture(spec, _texels_for(spec.patch_m, float(footprint.min()), size))
            albedo.reshape(3, -1)[:, idx] = tex.sample(u.ravel()[idx], v.ravel()[idx], footprint)
    # Skirting board, then doors and windows, painted with box-filtered (anti-aliased) edges.
    on_wall = axis != 2
    if params.skirting_m > 0:
        cover = _box_cover(p[2], -1.0, params.skirting_m, fp) * on_wall
        albedo += (np.asarray(params.skirting_color, np.float32)[:, None, None] - albedo) * cover
    for u0, u1, z0, z1, *colour in params.wall_rects:
        cover = _box_cover(wall_u, u0, u1, fp) * _box_cover(p[2], z0, z1, fp) * on_wall
        albedo += (np.asarray(colour[:3], np.float32)[:, None, None] - albedo) * cover

    shade = _shading(params, hits, p, size)
    # Shading is linear light; a gamma of 2 takes it to display values: out = albedo * sqrt(shade).
    tint = np.sqrt(np.asarray(params.light_tint, np.float32))[:, None, None]
    rgb = albedo * np.sqrt(shade) * tint
    luma = 0.299 * rgb[0].mean() + 0.587 * rgb[1].mean() + 0.114 * rgb[2].mean()
    rgb *= np.float32(params.exposure / max(float(luma), 1e-6))
    for u0, u1, z0, z1, *colour in params.wall_rects:  # bright windows: their own light, after exposure
        if len(colour) > 3 and colour[3] > 0:
            cover = _box_cover(wall_u, u0, u1, fp) * _box_cover(p[2], z0, z1, fp) * on_wall
            rgb += (np.asarray(colour[:3], np.float32)[:, None, None] * np.float32(colour[3]) - rgb) * cover
    image = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Background(image=np.ascontiguousarray(image), depth=t, floor=floor, focal_px=hits.f)


def _box_cover(x: np.ndarray, lo: float, hi: float, fp: np.ndarray) -> np.ndarray:
    """Fraction of [x - fp/2, x + fp/2] inside [lo, hi]: anti-aliased edges of wall rectangles."""
    half = fp / 2
    return np.clip((np.minimum(x + half, hi) - np.maximum(x - half, lo)) / np.maximum(fp, 1e-6), 0, 1)


def _footprint(params: RoomParams, hits: _Hits) -> np.ndarray:
    """Size (m) of one pixel on the surface it sees, from the exact derivatives of the hit point across pixels:
    dP/dx = t/f (R - d R_k/d_k), dP/dy = t/f (U - d U_k/d_k) for a hit on a plane k = const."""
    _, right, up = _basis(params)
    d = hits.d
    dk = np.select([hits.axis == 0, hits.axis == 1], [d[0], d[1]], d[2])
    rk = np.asarray(right, np.float32)[hits.axis] / dk
    uk = np.asarray(up, np.float32)[hits.axis] / dk
    d2 = 1 + hits.a * hits.a + hits.b * hits.b  # |d|^2 (forward, right, up are orthonormal)
    # R.d = a and U.d = -b, so |R - d q|^2 = 1 - 2 a q + |d|^2 q^2 and |U - d s|^2 = 1 + 2 b s + |d|^2 s^2.
    along_x = np.sqrt(np.maximum(1 - 2 * hits.a * rk + d2 * rk * rk, 0))
    along_y = np.sqrt(np.maximum(1 + 2 * hits.b * uk + d2 * uk * uk, 0))
    major = np.maximum(along_x, along_y)
    minor = np.minimum(along_x, along_y)
    # Between the isotropic choices: the larger axis alone blurs grazing floors, the smaller one aliases them.
    return (hits.t / np.float32(hits.f)) * np.maximum(np.sqrt(major * minor), major / 3)


def _shading(params: RoomParams, hits: _Hits, p: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Linear light per pixel: ambient + a point light with Lambert falloff and distance attenuation, darkened in
    the room's corners (occlusion) and towards the image corners (vignette)."""
    axis, d = hits.axis, hits.d
    light = (params.light_x, params.light_y, params.light_z)
    to_light = [np.float32(light[i]) - p[i] for i in range(3)]
    dist2 = to_light[0] ** 2 + to_light[1] ** 2 + to_light[2] ** 2
    # Inward normal of the hit plane: -sign(d_k) along axis k.
    facing = np.select([axis == 0, axis == 1], [to_light[0] * -np.sign(d[0]), to_light[1] * -np.sign(d[1])],
                       to_light[2] * -np.sign(d[2]))
    cos = np.maximum(facing, 0) / np.sqrt(np.maximum(dist2, 1e-6))
    direct = params.light_power * cos / (1 + dist2 / np.float32(params.light_falloff_m**2))
    # Distance from the hit point to the nearest edge of its face (where two surfaces meet).
    box = (params.width, params.length, params.height)
    edge = [np.minimum(p[i], np.float32(box[i]) - p[i]) for i in range(3)]
    near = np.select([axis == 0, axis == 1], [np.minimum(edge[1], edge[2]), np.minimum(edge[0], edge[2])],
                     np.minimum(edge[0], edge[1]))
    if params.floor_gloss > 0:  # Blinn-Phong highlight of the light on a glossy floor (normal +z)
        to_eye = [-d[i] for i in range(3)]
        eye_n = np.sqrt(to_eye[0] ** 2 + to_eye[1] ** 2 + to_eye[2] ** 2)
        light_n = np.sqrt(np.maximum(dist2, 1e-6))
        half = [to_light[i] / light_n + to_eye[i] / eye_n for i in range(3)]
        n_dot_h = np.maximum(half[2], 0) / np.sqrt(np.maximum(half[0] ** 2 + half[1] ** 2 + half[2] ** 2, 1e-12))
        floor = (axis == 2) & (d[2] < 0)
        # (s + 8) / 8 keeps the highlight's energy as it narrows (normalised Blinn-Phong)
        shine = np.float32(params.floor_shininess)
        spec = params.floor_gloss * params.light_power * (shine + 8) / 8 * n_dot_h ** shine
        direct = direct + np.where(floor, spec / (1 + dist2 / np.float32(params.light_falloff_m**2)), 0)
    occlusion = 1 - params.occlusion * np.exp(-near / np.float32(0.25))
    r2 = (hits.a * hits.a + hits.b * hits.b) * np.float32(hits.f**2 / ((size[0] / 2) ** 2 + (size[1] / 2) ** 2))
    vignette = 1 - params.vignette * r2
    return (params.ambient + direct) * occlusion * vignette
