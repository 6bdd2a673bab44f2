"""THE composition: cutouts stood on the floor of backgrounds, batched, in torch, the same code on CPU and CUDA.

The ground-truth rule (docs/ARCHITECTURE.md "Ground truth"):
- a cutout stands at a floor pixel (u, v); its contact depth is d = depth[v, u]; its pixel height is
  focal_px * height_m / d; its box's bottom centre is (u, v) and its width follows the cutout's aspect;
- the foreground's depth is d (optionally minus a small relief); visible alpha = alpha where the foreground is
  nearer than the background (z-buffer), else 0; `mask` = visible alpha;
- composite depth = foreground depth where visible alpha >= 0.5, background depth elsewhere.
Besides the foreground, `image` shows changed pixels that are background (mask 0, background depth): a soft
elliptical contact shadow around the contact point, a cast shadow (the cutout's own alpha sheared and squashed
onto the floor along a random light direction, softened by sampling a coarser mip level) and, on some floors, a
faint mirrored reflection below the contact that fades with distance. All of them darken or tint floor pixels
only.
A shaded cutout is lit like the spot it stands in: its brightness follows the background's under its box
(relative to the whole frame's) and it grows lighter towards the side where the background is brighter, and
towards its top. A camouflaged cutout takes its colours from the background behind it (its texture blended toward the mean
colour of the background under its box, or toward a nearby patch of the background), so that |image - bg| is
small inside the mask too.

Nothing here loops over samples or reads a tensor back to the host, so on CUDA a batch is a few kernels.

This module is long on purpose: it is the one implementation of the compositing rule (placement, shading,
shadows, reflections, camouflage), and its private helpers all serve `composite`; split, they would be one
module's internals spread over several files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from maskdepth.data.banks import BackgroundBank, CutoutBank


@dataclass(frozen=True)
class ComposeConfig:
    """The config section [compose]. A field added later defaults to composing exactly as before it existed
    (its draw skipped), so a dataset recorded without it is the same dataset (`recorded_compose`)."""

    height_jitter: tuple[float, float] = (0.85, 1.15)  # multiplies the cutout's nominal height in metres
    min_height: float = 0.08  # smallest and largest object height, as fractions of the image height
    max_height: float = 0.9
    min_inside: float = 0.7  # fraction of the object's box that must lie inside the image
    candidates: int = 8  # contact points drawn per sample; the first acceptable one is used (no host sync)
    shadow_prob: float = 0.5  # probability of a contact shadow
    shadow_strength: tuple[float, float] = (0.2, 0.55)  # darkening at the shadow's centre
    shadow_width: float = 1.3  # shadow ellipse width / object box width
    shadow_aspect: float = 0.3  # shadow ellipse height / width (a floor seen at an angle)
    relief: float = 0.0  # depth relief of the object as a fraction of its width (0: flat, at contact depth)
    # cast shadow: the silhouette laid on the floor; a point t pixels above the contact casts its shadow at
    # (x + kx * t, v - ky * t), kx in +-cast_shear, |ky| in cast_length (ky < 0: towards the camera)
    cast_prob: float = 0.5
    cast_strength: tuple[float, float] = (0.25, 0.6)  # darkening where the silhouette's shadow is full
    cast_shear: float = 1.2
    cast_length: tuple[float, float] = (0.15, 0.7)
    cast_towards_camera: float = 0.5  # probability that the shadow falls in front of the object
    cast_soft: int = 2  # up to this many mip levels coarser than the object's: a softer penumbra
    # floor reflection: the cutout mirrored about its contact row, fading out over reflection_fade of its height
    reflection_prob: float = 0.25
    reflection_strength: tuple[float, float] = (0.08, 0.3)
    reflection_fade: float = 0.6
    # shading: gain (L_box / L_frame) ** shade_match within shade_gain, plus a tilt across the width toward the
    # brighter side of the background (up to shade_tilt either way) and a lighter top (shade_top)
    shade_prob: float = 0.7
    shade_match: float = 0.5
    shade_gain: tuple[float, float] = (0.6, 1.4)
    shade_tilt: float = 0.35
    shade_top: tuple[float, float] = (0.0, 0.25)
    # camouflage: the cutout's colour blended by camo_amount toward the background's mean colour under its box or,
    # with probability camo_patch, toward a background patch camo_offset box widths to the side
    camo_prob: float = 0.25
    camo_amount: tuple[float, float] = (0.5, 0.9)
    camo_patch: float = 0.5
    camo_offset: tuple[float, float] = (0.3, 1.0)
    # cutouts standing in every background as static clutter, in bg and image alike (data/clutter.py)
    clutter: int = 0
    # probability that a camouflaged cutout takes only the target's brightness, keeping its own hue and saturation
    # (a red coat on a grey wall of the same brightness: what differencing by luminance misses)
    camo_luma: float = 0.0

    EFFECTS = ("shadow_prob", "cast_prob", "reflection_prob", "shade_prob", "camo_prob")

    def plain(self) -> ComposeConfig:
        """This config with every synthetic effect off (shadows, reflections, shading, camouflage): cutouts pasted
        as they are, what a benchmark of real pictures wants."""
        return dataclasses.replace(self, **{name: 0.0 for name in self.EFFECTS})

    @property
    def is_plain(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.EFFECTS)


def recorded_compose(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset's recorded [compose] completed with the defaults of the fields added since it was made."""
    # as metadata.json holds them: lists, not tuples
    defaults = json.loads(json.dumps(dataclasses.asdict(ComposeConfig())))
    return {**defaults, **recorded}


@dataclass
class Placement:
    """Where each of N cutouts stands; all tensors on the banks' device. Pixel coordinates: pixel i spans [i, i+1)."""

    bg_idx: torch.Tensor  # (N,) int64
    fg_idx: torch.Tensor  # (N,) int64 cutout ids
    flip: torch.Tensor  # (N,) bool: mirrored left-right
    contact: torch.Tensor  # (N,2) float32 (u, v): bottom centre of the box, a floor pixel's centre
    contact_depth: torch.Tensor  # (N,) float32 placement depth at the contact
    depth_known: torch.Tensor  # (N,) bool: the background's true depth at the contact is known
    height_px: torch.Tensor  # (N,) float32
    width_px: torch.Tensor  # (N,) float32
    level: torch.Tensor  # (N,) int64 mip level sampled (limits aliasing when the cutout is drawn small)
    shadow: torch.Tensor  # (N,) float32 shadow strength, 0 = none
    scale: torch.Tensor  # (N,) float32 drawn height / the cutout's original pixel height
    cast: torch.Tensor  # (N,) float32 cast-shadow strength, 0 = none
    light: torch.Tensor  # (N,2) float32 (kx, ky) of the cast shadow (see ComposeConfig)
    cast_level: torch.Tensor  # (N,) int64 mip level the cast shadow samples (coarser than `level`: softer)
    reflection: torch.Tensor  # (N,) float32 floor-reflection strength, 0 = none
    camo: torch.Tensor  # (N,) float32 camouflage blend, 0 = none
    camo_patch: torch.Tensor  # (N,) bool: toward a background patch (else toward the mean colour)
    camo_luma: torch.Tensor  # (N,) bool: only the target's brightness, the cutout's own chromaticity kept
    camo_color: torch.Tensor  # (N,3) float32 in [0,1]: the background's mean colour under the box
    camo_offset: torch.Tensor  # (N,2) float32 (x, y) pixels from a point to the patch pixel it takes
    fg_gain: torch.Tensor  # (N,) float32 brightness of the cutout (1: as drawn)
    fg_tilt: torch.Tensor  # (N,2) float32 gain change across half its width (x) and up its height (y)

    def __len__(self) -> int:
        return self.bg_idx.shape[0]

    def select(self, idx: torch.Tensor | slice) -> Placement:
        """The placements at `idx` (an index tensor or a slice)."""
        return Placement(**{k: v[idx] for k, v in self.__dict__.items()})

    @property
    def box(self) -> torch.Tensor:
        """(N,4) float32 [x0, y0, x1, y1]."""
        u, v = self.contact.unbind(1)
        half = self.width_px / 2
        return torch.stack([u - half, v - self.height_px, u + half, v], dim=1)


def _uniform(n: int, lo_hi: tuple[float, float], generator: torch.Generator | None, device) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def sample_placements(bgs: BackgroundBank, cutouts: CutoutBank, bg_idx: torch.Tensor, fg_idx: torch.Tensor,
                      flip: torch.Tensor, generator: torch.Generator | None, cfg: ComposeConfig) -> Placement:
    """Draw a contact point, size and shadow for each (background, cutout, flip) triple."""
    device = bgs.device
    n, k = bg_idx.shape[0], cfg.candidates
    h_img, w_img = bgs.size
    # contact candidates uniformly among each background's floor pixels
    r = torch.rand(n, k, generator=generator, device=device)
    count = bgs.floor_count[bg_idx][:, None]
    pick = torch.minimum((r * count).long(), count - 1) + bgs.floor_start[bg_idx][:, None]
    pix = bgs.floor_pixels[pick]  # (N,K) flat y*W+x
    u = (pix % w_img).float() + 0.5
    v = (pix // w_img).float() + 0.5
    row = bg_idx[:, None] * (h_img * w_img) + pix
    d = bgs.placement_depth.reshape(-1)[row]
    known = bgs.depth.reshape(-1)[row] > 0
    jitter = _uniform(n, cfg.height_jitter, generator, device)
    height_m = cutouts.height_m[fg_idx] * jitter
    aspect = cutouts.aspect[fg_idx]
    h = bgs.focal_px[bg_idx][:, None] * height_m[:, None] / d
    w = h * aspect[:, None]
    # accept a candidate whose size is in range and whose box lies mostly inside the image
    inside_x = ((u + w / 2).clamp(max=w_img) - (u - w / 2).clamp(min=0)).clamp(min=0) / w
    inside_y = (v - (v - h).clamp(min=0)) / h
    lo, hi = cfg.min_height * h_img, cfg.max_height * h_img
    ok = (inside_x * inside_y >= cfg.min_inside) & (h >= lo) & (h <= hi)
    choice = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first acceptable, else candidate 0

    def take(t: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 1, choice)[:, 0]

    height = take(h).clamp(lo, hi)  # a fallback candidate outside the range is drawn at the nearest bound
    width = height * aspect
    longest = torch.maximum(height, width)
    level = torch.floor(torch.log2(cutouts.size / longest)).clamp(0, cutouts.levels - 1).long()
    shadow_on = torch.rand(n, generator=generator, device=device) < cfg.shadow_prob
    strength = _uniform(n, cfg.shadow_strength, generator, device) * shadow_on
    cast_on = torch.rand(n, generator=generator, device=device) < cfg.cast_prob
    cast = _uniform(n, cfg.cast_strength, generator, device) * cast_on
    kx = _uniform(n, (-cfg.cast_shear, cfg.cast_shear), generator, device)
    towards = torch.rand(n, generator=generator, device=device) < cfg.cast_towards_camera
    # |ky| > 0: the shadow's rows map back to heights through 1 / ky
    ky = _uniform(n, cfg.cast_length, generator, device).clamp(min=0.01) * (1 - 2 * towards.float())
    soft = torch.randint(0, cfg.cast_soft + 1, (n,), generator=generator, device=device)
    reflect_on = torch.rand(n, generator=generator, device=device) < cfg.reflection_prob
    reflection = _uniform(n, cfg.reflection_strength, generator, device) * reflect_on
    camo_on = torch.rand(n, generator=generator, device=device) < cfg.camo_prob
    camo = _uniform(n, cfg.camo_amount, generator, device) * camo_on
    patch = torch.rand(n, generator=generator, device=device) < cfg.camo_patch
    side = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    offset = torch.stack([side * _uniform(n, cfg.camo_offset, generator, device) * width,
                          _uniform(n, (-0.2, 0.2), generator, device) * height], dim=1)
    # drawn only where asked for, so configs without it compose exactly as before
    luma = (torch.rand(n, generator=generator, device=device) < cfg.camo_luma if cfg.camo_luma > 0
            else torch.zeros(n, dtype=torch.bool, device=device))
    u, v = take(u), take(v)
    gain, tilt = _shading(bgs, bg_idx, u, v, width, height, generator, cfg)
    return Placement(
        bg_idx=bg_idx, fg_idx=fg_idx, flip=flip.bool(),
        contact=torch.stack([u, v], dim=1), contact_depth=take(d),
        depth_known=torch.gather(known, 1, choice)[:, 0],
        height_px=height, width_px=width, level=level, shadow=strength,
        scale=height / cutouts.src_hw[fg_idx, 0],
        cast=cast, light=torch.stack([kx, ky], dim=1), cast_level=(level + soft).clamp(max=cutouts.levels - 1),
        reflection=reflection, camo=camo, camo_patch=patch, camo_luma=luma,
        camo_color=_box_mean_colour(bgs, bg_idx, u, v, width, height), camo_offset=offset,
        fg_gain=gain, fg_tilt=tilt,
    )


_LUMA = (0.299, 0.587, 0.114)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """(...) luma of (..., 3) RGB."""
    return rgb @ torch.tensor(_LUMA, device=rgb.device, dtype=rgb.dtype)


def _shading(bgs: BackgroundBank, bg_idx: torch.Tensor, u: torch.Tensor, v: torch.Tensor, width: torch.Tensor,
             height: torch.Tensor, generator: torch.Generator | None, cfg: ComposeConfig
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain (N,), tilt (N,2)) lighting each cutout like the background around it (see ComposeConfig)."""
    n, device = bg_idx.shape[0], u.device
    h_img, w_img = bgs.size
    on = torch.rand(n, generator=generator, device=device) < cfg.shade_prob
    jitter = _uniform(n, (-0.5 * cfg.shade_tilt, 0.5 * cfg.shade_tilt), generator, device)
    top = _uniform(n, cfg.shade_top, generator, device)
    full_w, full_h = torch.full_like(u, float(w_img)), torch.full_like(u, float(h_img))
    frame = _luma(_box_mean_colour(bgs, bg_idx, full_w / 2, full_h, full_w, full_h)).clamp(min=1e-3)
    box = _luma(_box_mean_colour(bgs, bg_idx, u, v, width, height))
    left = _luma(_box_mean_colour(bgs, bg_idx, u - width / 4, v, width / 2, height))
    right = _luma(_box_mean_colour(bgs, bg_idx, u + width / 4, v, width / 2, height))
    lo, hi = cfg.shade_gain
    gain = (box.clamp(min=1e-3) / frame).pow(cfg.shade_match).clamp(lo, hi)
    tilt_x = (2 * (right - left) / (right + left).clamp(min=1e-3) + jitter).clamp(-cfg.shade_tilt, cfg.shade_tilt)
    gain = torch.where(on, gain, torch.ones_like(gain))
    tilt = torch.stack([tilt_x, top], dim=1) * on.view(n, 1)
    return gain, tilt


def _box_mean_colour(bgs: BackgroundBank, bg_idx: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                     width: torch.Tensor, height: torch.Tensor, k: int = 8) -> torch.Tensor:
    """(N,3) mean colour of each background over a k x k grid of points spread over the box (clamped to the
    picture): the colour behind the object, read from the bank, so it does not depend on any window."""
    h_img, w_img = bgs.size
    n = bg_idx.shape[0]
    f = (torch.arange(k, device=u.device, dtype=u.dtype) + 0.5) / k
    xs = (u[:, None] + (f[None] - 0.5) * width[:, None]).floor().long().clamp(0, w_img - 1)  # (N,k)
    ys = (v[:, None] - f[None] * height[:, None]).floor().long().clamp(0, h_img - 1)
    pix = (ys[:, :, None] * w_img + xs[:, None, :]).view(n, 1, k * k)
    planes = (bg_idx.view(n, 1, 1) * 3 + torch.arange(3, device=u.device).view(1, 3, 1)) * (h_img * w_img)
    return bgs.image.reshape(-1)[planes + pix].float().mean(2) / 255.0  # (N,3): only the k*k points are read


def _reflection_level(cutouts: CutoutBank, p: Placement) -> torch.Tensor:
    """A glossy floor blurs what it mirrors: one mip level coarser than the object's."""
    return (p.level + 1).clamp(max=cutouts.levels - 1)


def _texel_px(cutouts: CutoutBank, p: Placement, level: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Size of one texel of mip level `level` (default: the object's), in output pixels (x, y): bilinear sampling
    reaches this far outside the box."""
    level = p.level if level is None else level
    region = cutouts.region[p.fg_idx] * torch.exp2(-level.float())[:, None]
    return p.width_px / region[:, 2], p.height_px / region[:, 3]


def _atlas_map(cutouts: CutoutBank, p: Placement, level: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ax, bx, ay, by), each (N,): the box point (x, y) in output pixels is sampled at atlas coordinates
    (ax * x + bx, ay * y + by) of mip level `level`, normalised for grid_sample (align_corners=False).

    x -> s = (x - x0) / w (mirrored: (x1 - x) / w) -> X = rx0 + s * rw of the level; likewise for y, never
    mirrored."""
    _, _, ah, aw = cutouts.atlas.shape
    lvl_scale = torch.exp2(-level.float())
    cell = cutouts.cell_origin[p.fg_idx] + cutouts.level_origin[level]
    region = cutouts.region[p.fg_idx]
    rx0 = cell[:, 0] + region[:, 0] * lvl_scale
    ry0 = cell[:, 1] + region[:, 1] * lvl_scale
    rw, rh = region[:, 2] * lvl_scale, region[:, 3] * lvl_scale
    x0, y0, x1, _ = p.box.unbind(1)
    sign = 1.0 - 2.0 * p.flip.float()
    x_ref = torch.where(p.flip, x1, x0)
    ax = (2 / aw) * sign * rw / p.width_px
    bx = (2 / aw) * (rx0 - sign * rw * x_ref / p.width_px) - 1
    ay = (2 / ah) * rh / p.height_px
    by = (2 / ah) * (ry0 - rh * y0 / p.height_px) - 1
    return ax, bx, ay, by


def placement_windows(cutouts: CutoutBank, p: Placement, cfg: ComposeConfig, size: tuple[int, int]) -> torch.Tensor:
    """(N,4) int64 [x0, y0, x1, y1) bounding every pixel a placement changes (object, its filter fringe, contact
    and cast shadows, reflection).

    Outside it `composite` gives the background exactly: image = bg, mask = 0, depth = background depth.
    """
    h_img, w_img = size
    tx, ty = _texel_px(cutouts, p)
    u, v = p.contact.unbind(1)
    half = p.width_px / 2
    rx = torch.where(p.shadow > 0, cfg.shadow_width * half, 0.0)
    ry = rx * cfg.shadow_aspect
    x_lo = torch.minimum(u - half - tx, u - rx)
    x_hi = torch.maximum(u + half + tx, u + rx)
    y_lo = torch.minimum(v - p.height_px - ty, v - ry)
    y_hi = torch.maximum(v + ty, v + ry)
    # the cast shadow: the source rectangle (x_o within the box and fringe, height t in [-ty, h + ty]) sheared
    # onto the floor; its extremes lie at the two ends of t
    cx, cy = _texel_px(cutouts, p, p.cast_level)
    kx, ky = p.light.unbind(1)
    cast = p.cast > 0
    for t in (-cy, p.height_px + cy):
        x_lo = torch.where(cast, torch.minimum(x_lo, u - half - cx + kx * t), x_lo)
        x_hi = torch.where(cast, torch.maximum(x_hi, u + half + cx + kx * t), x_hi)
        y_lo = torch.where(cast, torch.minimum(y_lo, v - ky * t), y_lo)
        y_hi = torch.where(cast, torch.maximum(y_hi, v - ky * t), y_hi)
    # the reflection: below the contact, the box's width and fringe, as far as it fades
    fx, _ = _texel_px(cutouts, p, _reflection_level(cutouts, p))
    reflect = p.reflection > 0
    x_lo = torch.where(reflect, torch.minimum(x_lo, u - half - fx), x_lo)
    x_hi = torch.where(reflect, torch.maximum(x_hi, u + half + fx), x_hi)
    y_hi = torch.where(reflect, torch.maximum(y_hi, v + cfg.reflection_fade * p.height_px), y_hi)
    box = torch.stack([x_lo.floor(), y_lo.floor(), x_hi.ceil() + 1, y_hi.ceil() + 1], 1).long()
    limit = torch.tensor([w_img, h_img, w_img, h_img], device=box.device)
    return torch.minimum(box.clamp(min=0), limit)


def _window(t: torch.Tensor, b: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, hw: int, ww: int) -> torch.Tensor:
    """(N,C,hw,ww) windows of bank tensor t (B,C,H,W): image b[n] from (ox[n], oy[n]). Two plain gathers (whole
    rows, then columns) are several times faster on the CPU than one four-index gather."""
    n = b.shape[0]
    _, c, h, w = t.shape
    dev = t.device
    rows = ((b.view(n, 1, 1) * c + torch.arange(c, device=dev).view(1, c, 1)) * h + oy.view(n, 1, 1)
            + torch.arange(hw, device=dev).view(1, 1, hw))
    out = t.reshape(-1, w).index_select(0, rows.view(-1)).view(n, c, hw, w)
    if ww == w:  # full width (the window starts at column 0)
        return out
    cols = (ox.view(n, 1, 1, 1) + torch.arange(ww, device=dev)).expand(n, c, hw, ww)
    return torch.gather(out, 3, cols)


def _drawn(on: torch.Tensor) -> torch.Tensor | None:
    """Indices of the samples where an optional effect is on, on the CPU (where computing only those is worth a
    look at `on`); None elsewhere: compute all, since reading `on` back would stall the GPU. An effect computed for
    a sample where it is off leaves it exactly unchanged, so both give the same bits."""
    return on.nonzero()[:, 0] if on.device.type == "cpu" else None


def _rows(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """t's samples `idx` (all of them for None)."""
    return t if idx is None else t[idx]


def _scatter(vals: torch.Tensor, idx: torch.Tensor | None, n: int) -> torch.Tensor:
    """(N, ...) with `vals` at the samples `idx` and zeros elsewhere (vals itself for None)."""
    if idx is None:
        return vals
    return vals.new_zeros((n, *vals.shape[1:])).index_copy_(0, idx, vals)


def _subset(p: Placement, idx: torch.Tensor | None) -> Placement:
    return p if idx is None else p.select(idx)


def _put(t: torch.Tensor, idx: torch.Tensor | None, vals: torch.Tensor) -> torch.Tensor:
    """t with its samples `idx` replaced by vals (vals itself for None)."""
    return vals if idx is None else t.index_copy(0, idx, vals)


def _cast_grid(cutouts: CutoutBank, c: Placement, xs: torch.Tensor, ys: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where floor pixel (x, y) looks up the silhouette that shades it: a point t = (v - y) / ky above the contact,
    at x_o = x - kx * t. Returns the (K,H,W,2) atlas grid at the cast level and (K,1,H,W) 1 where that point lies
    in the box and its fringe (beyond it the grid runs into neighbouring atlas cells)."""
    k, hw, ww = xs.shape[0], ys.shape[2], xs.shape[3]
    kx, ky = (t.view(k, 1, 1, 1) for t in c.light.unbind(1))
    u, v = (t.view(k, 1, 1, 1) for t in c.contact.unbind(1))
    t = (v - ys) / ky  # (K,1,H,1)
    x_o = xs - kx * t  # (K,1,H,W)
    sx, sbx, sy, sby = (a.view(k, 1, 1, 1) for a in _atlas_map(cutouts, c, c.cast_level))
    grid = torch.stack([(sx * x_o + sbx)[:, 0], (sy * (v - t) + sby).expand(k, 1, hw, ww)[:, 0]], dim=-1)
    tx, ty = (a.view(k, 1, 1, 1) for a in _texel_px(cutouts, c, c.cast_level))
    height = c.height_px.view(k, 1, 1, 1)
    inside = ((x_o - u).abs() <= c.width_px.view(k, 1, 1, 1) / 2 + tx) & (t >= -ty) & (t <= height + ty)
    return grid, inside.float()


def _mirror_grid(cutouts: CutoutBank, r: Placement, xs: torch.Tensor, ys: torch.Tensor, cfg: ComposeConfig
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reflection below the contact row: (K,H,W,2) atlas grid, mirrored about row v at one level coarser
    (a glossy floor blurs), and (K,1,H,W) its strength: full at the contact, gone at reflection_fade of the
    height, inside the box and fringe of that level, below the contact only."""
    k, hw, ww = xs.shape[0], ys.shape[2], xs.shape[3]
    level = _reflection_level(cutouts, r)
    u, v = (t.view(k, 1, 1, 1) for t in r.contact.unbind(1))
    fx, fbx, fy, fby = (a.view(k, 1, 1, 1) for a in _atlas_map(cutouts, r, level))
    grid = torch.stack([(fx * xs + fbx).expand(k, 1, hw, ww)[:, 0], (fy * (2 * v - ys) + fby).expand(k, 1, hw, ww)[:, 0]],
                       dim=-1)
    tx, _ = (a.view(k, 1, 1, 1) for a in _texel_px(cutouts, r, level))
    height = r.height_px.view(k, 1, 1, 1)
    fade = (1 - (ys - v) / (cfg.reflection_fade * height)).clamp_(0, 1) * (ys >= v).float()  # (K,1,H,1)
    across = ((xs - u).abs() <= r.width_px.view(k, 1, 1, 1) / 2 + tx).float()  # (K,1,1,W)
    return grid, across * fade * r.reflection.view(k, 1, 1, 1)


CAMO_LUMA_GAIN = 8.0  # a near-black cutout brightened this much at most: beyond, it is its own noise


def _camo_target(bgs: BackgroundBank, c: Placement, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(K,3,H,W) the colour a camouflaged cutout takes: the background's mean under the box, or the background
    patch camo_offset away, read from the bank at absolute coordinates (never from the window)."""
    h_img, w_img = bgs.size
    k = xs.shape[0]
    ox, oy = (t.view(k, 1, 1, 1) for t in c.camo_offset.unbind(1))
    px = (xs + ox).floor().long().clamp(0, w_img - 1)  # (K,1,1,W)
    py = (ys + oy).floor().long().clamp(0, h_img - 1)  # (K,1,H,1)
    planes = (c.bg_idx.view(k, 1, 1, 1) * 3 + torch.arange(3, device=xs.device).view(1, 3, 1, 1)) * h_img
    patch = bgs.image.reshape(-1)[(planes + py) * w_img + px].float() / 255.0
    return torch.where(c.camo_patch.view(k, 1, 1, 1), patch, c.camo_color.view(k, 3, 1, 1))


def composite(bgs: BackgroundBank, cutouts: CutoutBank, p: Placement, cfg: ComposeConfig,
              origin: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Composite N placements: float32 `image` (N,3,H,W) in [0,1], `mask`, `depth`, `depth_valid` (N,1,H,W) and
    the clean background `bg` (N,3,H,W).

    With `origin` (N,2) int64 (x, y) and `size` (h, w), only that window of each frame is computed (each window
    inside the image). Every pixel is a function of its own coordinates only, so a window holds exactly the
    full frame's values there; `data make` composites just the windows of `placement_windows` on the CPU.
    """
    n = len(p)
    h_img, w_img = bgs.size
    device = bgs.device
    if origin is None:
        origin, size = torch.zeros(n, 2, dtype=torch.long, device=device), (h_img, w_img)
    hw, ww = size
    ox, oy = origin[:, 0], origin[:, 1]
    bg = _window(bgs.image, p.bg_idx, ox, oy, hw, ww).float() / 255.0
    bg_depth = _window(bgs.depth, p.bg_idx, ox, oy, hw, ww)
    bg_place = _window(bgs.placement_depth, p.bg_idx, ox, oy, hw, ww)
    floor = _window(bgs.floor, p.bg_idx, ox, oy, hw, ww)
    xs = (ox.view(n, 1) + torch.arange(ww, device=device)).float().view(n, 1, 1, ww) + 0.5  # pixel centres
    ys = (oy.view(n, 1) + torch.arange(hw, device=device)).float().view(n, 1, hw, 1) + 0.5

    x0, y0, _, _ = p.box.unbind(1)
    u = p.contact[:, 0].view(n, 1, 1, 1)
    v = p.contact[:, 1].view(n, 1, 1, 1)
    half_w = (p.width_px / 2).view(n, 1, 1, 1)

    # the object and its reflection from the shared atlas in one grid_sample call (the grids stacked as one tall
    # image), its cast shadow from the alpha plane; shadows, reflections and camouflage only where they are on
    cast_idx, ref_idx, camo_idx = _drawn(p.cast > 0), _drawn(p.reflection > 0), _drawn(p.camo > 0)
    ax, bx, ay, by = (t.view(n, 1, 1, 1) for t in _atlas_map(cutouts, p, p.level))
    obj_grid = torch.stack([(ax * xs + bx).view(n, 1, ww).expand(n, hw, ww),
                            (ay * ys + by).view(n, hw, 1).expand(n, hw, ww)], dim=-1)
    cast_grid, in_cast = _cast_grid(cutouts, _subset(p, cast_idx), _rows(xs, cast_idx), _rows(ys, cast_idx))
    ref_grid, gloss = _mirror_grid(cutouts, _subset(p, ref_idx), _rows(xs, ref_idx), _rows(ys, ref_idx), cfg)
    k_cast, k_ref = cast_grid.shape[0], ref_grid.shape[0]
    k = n + k_ref
    fg = F.grid_sample(cutouts.atlas, torch.cat([obj_grid, ref_grid]).view(1, k * hw, ww, 2),
                       mode="bilinear", padding_mode="zeros", align_corners=False)
    fg = fg.view(4, k, hw, ww).transpose(0, 1)  # (K,4,H,W)
    fg_rgb, alpha = fg[:n, :3], fg[:n, 3:]
    # a shadow needs only alpha: sampled from the alpha plane, a quarter of the work
    cast_alpha = F.grid_sample(cutouts.alpha, cast_grid.view(1, k_cast * hw, ww, 2), mode="bilinear",
                               padding_mode="zeros", align_corners=False).view(k_cast, 1, hw, ww)
    # shading: a gain with a tilt across the width and up the height, premultiplied colour kept <= alpha
    tilt_x, tilt_y = (t.view(n, 1, 1, 1) for t in p.fg_tilt.unbind(1))
    across = (xs - u) / half_w  # (N,1,1,W) in [-1, 1] over the box
    up = (v - ys) / p.height_px.view(n, 1, 1, 1) * 2 - 1  # (N,1,H,1) -1 at the contact, 1 at the top
    shade = p.fg_gain.view(n, 1, 1, 1) * (1 + tilt_x * across + tilt_y * up)
    fg_rgb = torch.minimum(fg_rgb * shade, alpha)
    if camo_idx is None or camo_idx.numel():
        c = _subset(p, camo_idx)
        own, a = _rows(fg_rgb, camo_idx), _rows(alpha, camo_idx)
        target = a * _camo_target(bgs, c, _rows(xs, camo_idx), _rows(ys, camo_idx))
        # brightness only: the cutout's colour scaled to the target's luma (premultiplied, so alpha cancels)
        luma_target, luma_own = (_luma(x.movedim(1, -1)).unsqueeze(1) for x in (target, own))  # (K,1,H,W)
        gain = (luma_target / luma_own.clamp_min(1e-3)).clamp(max=CAMO_LUMA_GAIN)
        target = torch.where(c.camo_luma.view(-1, 1, 1, 1), torch.minimum(own * gain, a), target)
        blended = torch.lerp(own, target, c.camo.view(-1, 1, 1, 1))
        fg_rgb = _put(fg_rgb, camo_idx, blended)

    tx, ty = (t.view(n, 1, 1, 1) for t in _texel_px(cutouts, p))
    dx = xs - u  # (N,1,1,W): per-column and per-row terms stay small until they meet
    # the box plus one texel of bilinear fringe; beyond it the grid runs into neighbouring atlas cells
    in_x = (dx.abs() <= half_w + tx).float()
    in_y = ((ys >= y0.view(n, 1, 1, 1) - ty) & (ys <= v + ty)).float()
    # foreground depth: the contact depth, nearer by a half-cylinder bulge across the width when relief > 0
    bulge = (1 - (dx / half_w) * (dx / half_w)).clamp(min=0).sqrt()
    width_m = (p.width_px * p.contact_depth / bgs.focal_px[p.bg_idx]).view(n, 1, 1, 1)
    fg_depth = p.contact_depth.view(n, 1, 1, 1) - cfg.relief * width_m * bulge  # (N,1,1,W)
    shown = (fg_depth <= bg_place).float().mul_(in_x).mul_(in_y)  # the z-buffer test, inside the box
    vis = alpha * shown

    # the floor reflection tints the background, premultiplied: bg (1 - g a) + g rgb
    floor_bg = bg
    if k_ref:
        g = gloss * _rows(floor, ref_idx)
        ref_rgba = fg[n:]
        floor_bg = _put(bg, ref_idx, torch.addcmul(_rows(bg, ref_idx) * (1 - g * ref_rgba[:, 3:]), ref_rgba[:, :3], g))
    # contact shadow on the floor, compact and smooth: strength * (1 - r^2)^2 inside the ellipse
    rx = cfg.shadow_width * half_w
    ry = rx * cfg.shadow_aspect
    ex, ey = dx / rx, (ys - v) / ry
    fall = ((1 - ex * ex) - ey * ey).clamp_(min=0)
    keep = 1 - vis
    keep.mul_(1 - fall.mul_(fall).mul_(floor).mul_(p.shadow.view(n, 1, 1, 1)))  # (1 - vis) * shade
    if k_cast:  # the cast shadow darkens the floor where the silhouette falls
        strength = _subset(p, cast_idx).cast.view(-1, 1, 1, 1)
        term = 1 - cast_alpha * in_cast * _rows(floor, cast_idx) * strength
        keep = _put(keep, cast_idx, _rows(keep, cast_idx) * term)

    image = torch.addcmul(floor_bg * keep, fg_rgb, shown).clamp_(0, 1)
    fg_depth_truth = fg_depth * p.depth_known.view(n, 1, 1, 1)  # unknown where the background's depth is
    depth = torch.where(vis >= 0.5, fg_depth_truth, bg_depth)
    return {"image": image, "mask": vis, "depth": depth, "depth_valid": (depth > 0).float(), "bg": bg}
