"""Joint augmentation of a batch dict: one geometric draw per sample shared by bg, image, mask and depth.

Each sample gets one transform: an integer crop box (random resized crop), a horizontal flip and, optionally, a
small rotation about the box centre. The same transform resamples bg, image and mask (bilinear, antialiased when
shrinking) and depth / depth_valid (nearest, so depths are never blended across an object's edge). A global
light change (exposure, white balance, contrast, saturation) is then applied identically to bg and image, as a
change of scene lighting would be; capture differences between bg and image are data/capture.py's job.

Speed: the work is done sample by sample so each step runs on data that fits in the CPU cache. Axis-aligned
samples (no rotation) are cropped by slicing and resized with F.interpolate, whose fast uint8 kernels want 3- or
4-channel channels-last pictures: image+mask travel as one RGBA tensor and bg as RGB. Depth is resampled by
index gathering. Rotated samples go through F.grid_sample with the equivalent sampling grid (same pixel-centre
convention), which is several times slower, so rotation is off by default.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]
_LUMA = (0.299, 0.587, 0.114)
_CL = torch.channels_last


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the joint augmentation. A probability of 0 turns an effect off."""

    hflip: float = 0.5                                  # horizontal flip (never vertical: floors stay down)
    crop: float = 0.75                                  # random resized crop, else the whole picture
    crop_scale: tuple[float, float] = (0.5, 1.0)        # crop area as a fraction of the picture
    crop_ratio: tuple[float, float] = (0.8, 1.25)       # aspect change of the crop (log-uniform)
    rotate: float = 0.0                                 # small rotation (slower path, see module doc)
    rotate_deg: float = 5.0
    photometric: float = 0.8                            # global light change, same for bg and image
    brightness: float = 0.25                            # exposure gain in 1 +- brightness
    contrast: float = 0.2                               # contrast in 1 +- contrast, about the bg's mean
    saturation: float = 0.25                            # saturation in 1 +- saturation
    white_balance: float = 0.05                         # per-channel gain in 1 +- white_balance

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(hflip=0.0, crop=0.0, rotate=0.0, photometric=0.0)


def as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


@dataclass
class Draw:
    """One sample's transform: integer crop box (x0, y0, w, h) in input pixels, flip, rotation (radians), and
    light change: per-channel gain (exposure x white balance), contrast, saturation."""

    box: tuple[int, int, int, int]
    flip: bool = False
    angle: float = 0.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    saturation: float = 1.0


def draw(u: list[float], in_hw: tuple[int, int], out_hw: tuple[int, int], cfg: AugmentConfig) -> Draw:
    """One sample's transform from 15 uniforms in [0,1)."""
    H, W = in_hw
    oh, ow = out_hw
    box = (0, 0, W, H)
    if u[1] < cfg.crop:
        area = H * W * (cfg.crop_scale[0] + u[2] * (cfg.crop_scale[1] - cfg.crop_scale[0]))
        lo, hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        aspect = math.exp(lo + u[3] * (hi - lo)) * (ow / oh)  # crop w/h in input pixels
        w = min(W, max(1, round(math.sqrt(area * aspect))))
        h = min(H, max(1, round(math.sqrt(area / aspect))))
        box = (min(W - w, int(u[4] * (W - w + 1))), min(H - h, int(u[5] * (H - h + 1))), w, h)
    angle = math.radians(cfg.rotate_deg) * (2 * u[7] - 1) if u[6] < cfg.rotate else 0.0
    d = Draw(box, u[0] < cfg.hflip, angle)
    if u[8] < cfg.photometric:
        g = 1 + cfg.brightness * (2 * u[9] - 1)
        d.gain = tuple(g * (1 + cfg.white_balance * (2 * x - 1)) for x in u[10:13])
        d.contrast = 1 + cfg.contrast * (2 * u[13] - 1)
        d.saturation = 1 + cfg.saturation * (2 * u[14] - 1)
    return d


def sampling_grid(d: Draw, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """grid_sample grid (1,oh,ow,2), align_corners=False, for one transform: output pixel centre (j+.5, i+.5) ->
    crop box position (flipped if d.flip), rotated by d.angle about the box centre. Without rotation this is
    exactly the mapping of crop + F.interpolate(align_corners=False) + flip."""
    (x0, y0, w, h), (H, W), (oh, ow) = d.box, in_hw, out_hw
    j = torch.arange(ow, dtype=torch.float64)
    if d.flip:
        j = ow - 1 - j
    u = (x0 + (j + 0.5) * (w / ow)).view(1, ow).expand(oh, ow)
    v = (y0 + (torch.arange(oh, dtype=torch.float64) + 0.5) * (h / oh)).view(oh, 1).expand(oh, ow)
    cx, cy, c, s = x0 + w / 2, y0 + h / 2, math.cos(d.angle), math.sin(d.angle)
    ur = cx + c * (u - cx) - s * (v - cy)
    vr = cy + s * (u - cx) + c * (v - cy)
    return torch.stack([2 * ur / W - 1, 2 * vr / H - 1], dim=-1)[None].float()


@functools.lru_cache(maxsize=1024)
def _nearest_index(start: int, length: int, out: int, flip: bool = False) -> torch.Tensor:
    """Source indices of F.interpolate(mode='nearest-exact') for a crop [start, start+length) -> out pixels.
    (Cached and shared: callers must not modify the result.)"""
    idx = np.minimum(np.floor((np.arange(out) + 0.5) * (length / out)), length - 1).astype(np.int64) + start
    return torch.from_numpy(np.ascontiguousarray(idx[::-1]) if flip else idx)


def _smooth(x: torch.Tensor, d: Draw, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of one sample x (1,C,H,W), uint8 or float; uint8 in gives uint8 out unless rotated."""
    if d.angle:
        return F.grid_sample(x.float(), sampling_grid(d, tuple(x.shape[-2:]), out_hw), mode="bilinear",
                             padding_mode="zeros", align_corners=False)
    x0, y0, w, h = d.box
    r = x[:, :, y0:y0 + h, x0:x0 + w]
    if (h, w) != out_hw:
        shrink = h > out_hw[0] or w > out_hw[1]
        r = F.interpolate(r, size=out_hw, mode="bilinear", align_corners=False, antialias=shrink)
    return r.flip(-1) if d.flip else r


def _nearest(x: torch.Tensor, d: Draw, out_hw: tuple[int, int]) -> torch.Tensor:
    """Nearest resampling of one sample x (1,C,H,W) float; outside the picture (rotation) is 0."""
    if d.angle:
        return F.grid_sample(x, sampling_grid(d, tuple(x.shape[-2:]), out_hw), mode="nearest",
                             padding_mode="zeros", align_corners=False)
    x0, y0, w, h = d.box
    if (h, w) == out_hw == tuple(x.shape[-2:]):
        return x.flip(-1) if d.flip else x
    rows = _nearest_index(y0, h, out_hw[0])
    cols = _nearest_index(x0, w, out_hw[1], d.flip)
    return x.index_select(2, rows).index_select(3, cols)


def _as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 0..255 <-> float [0,1], so bg, image and mask share one value scale."""
    if x.dtype == dtype:
        return x
    if dtype == torch.uint8:
        return (x.float() * 255).round_().clamp_(0, 255).to(torch.uint8)
    return x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)


def _light_(y: torch.Tensor, d: Draw, pivot: float, unit: float) -> None:
    """In place on one sample's float picture (3,H,W) holding values in [0, 1/unit]: exposure and white balance,
    contrast about `pivot`, saturation about luminance, clamp to [0,1]."""
    c = d.contrast
    y.mul_(torch.tensor([g * unit * c for g in d.gain]).view(3, 1, 1))
    if c != 1.0:
        y.add_(pivot * (1 - c))
    if d.saturation != 1.0:
        gray = (y[0] * _LUMA[0]).add_(y[1], alpha=_LUMA[1]).add_(y[2], alpha=_LUMA[2])
        y.sub_(gray).mul_(d.saturation).add_(gray)
    y.clamp_(0.0, 1.0)


def empty_batch(n: int, size: int | tuple[int, int], empty=torch.empty) -> Batch:
    """Uninitialised float32 batch dict of n samples at `size`; `empty(*shape)` allocates (e.g. shared memory)."""
    hw = as_hw(size)
    return {"bg": empty(n, 3, *hw), "image": empty(n, 3, *hw), "mask": empty(n, 1, *hw),
            "depth": empty(n, 1, *hw), "depth_valid": empty(n, 1, *hw)}


def apply_draws(batch: Batch, draws: list[Draw], size: int | tuple[int, int], out: Batch | None = None) -> Batch:
    """Resample and relight a batch with one Draw per sample -> float32 batch dict at `size`.

    bg, image (N,3,H,W) and mask (N,1,H,W) may be uint8 (0..255) or float [0,1] (uint8 channels-last is the fast
    path); depth (N,1,H,W) float; depth_valid optional (default depth > 0). `out` (see empty_batch) receives the
    result instead of new tensors.
    """
    out_hw = as_hw(size)
    image, depth, valid = batch["image"], batch["depth"].float(), batch.get("depth_valid")
    mask, bg = _as_dtype(batch["mask"], image.dtype), _as_dtype(batch["bg"], image.dtype)
    n, in_hw = image.shape[0], tuple(image.shape[-2:])
    unit = 1 / 255.0 if image.dtype == torch.uint8 else 1.0
    out = empty_batch(n, out_hw) if out is None else out
    for i, d in enumerate(draws):
        if d.box == (0, 0, in_hw[1], in_hw[0]) and in_hw == out_hw and not d.angle:
            d_img, d_mask, d_bg = image[i:i + 1], mask[i:i + 1], bg[i:i + 1]  # nothing to resample
            if d.flip:
                d_img, d_mask, d_bg = d_img.flip(-1), d_mask.flip(-1), d_bg.flip(-1)
        else:
            rgba = torch.empty((1, 4, *in_hw), dtype=image.dtype, memory_format=_CL)
            rgba[:, :3], rgba[:, 3:] = image[i:i + 1], mask[i:i + 1]
            rgba = _smooth(rgba, d, out_hw)
            d_img, d_mask = rgba[:, :3], rgba[:, 3:]
            d_bg = _smooth(bg[i:i + 1].contiguous(memory_format=_CL), d, out_hw)
        # a channels-last -> planar copy is cheapest done on bytes, then widened to float contiguously
        out["image"][i].copy_(d_img[0].contiguous())
        out["bg"][i].copy_(d_bg[0].contiguous())
        out["mask"][i].copy_(d_mask[0])
        out["depth"][i].copy_(_nearest(depth[i:i + 1], d, out_hw)[0])
        if valid is not None:
            out["depth_valid"][i].copy_(_nearest(valid[i:i + 1].float(), d, out_hw)[0])
        bgi = out["bg"][i]
        pivot = 0.0
        if d.contrast != 1.0:  # the bg's mean luminance after exposure and white balance
            pivot = sum(m * g * unit * lk for m, g, lk in zip(bgi.mean(dim=(1, 2)).tolist(), d.gain, _LUMA))
        _light_(bgi, d, pivot, unit)
        _light_(out["image"][i], d, pivot, unit)
    if mask.dtype == torch.uint8:
        out["mask"].mul_(1 / 255.0)  # the same product as the pictures get in _light_
    out["mask"].clamp_(0.0, 1.0)  # bilinear weights may sum to a hair over 1
    if valid is None:
        out["depth_valid"].copy_(out["depth"] > 0)
    return out


def augment_batch(batch: Batch, cfg: AugmentConfig, size: int | tuple[int, int],
                  generator: torch.Generator | None = None, out: Batch | None = None) -> Batch:
    """Augment a batch dict and bring it to `size` (see apply_draws for accepted inputs).

    Returns the float32 batch dict of docs/ARCHITECTURE.md. All random numbers come from one draw of
    `generator` (15 uniforms per sample), so a batch's augmentation is a pure function of the generator state.
    """
    out_hw = as_hw(size)
    n, in_hw = batch["image"].shape[0], tuple(batch["image"].shape[-2:])
    u = torch.rand(n, 15, generator=generator, dtype=torch.float64).tolist()
    return apply_draws(batch, [draw(r, in_hw, out_hw, cfg) for r in u], out_hw, out)


def resize_batch(batch: Batch, size: int | tuple[int, int], out: Batch | None = None) -> Batch:
    """No augmentation: bring a batch to `size` (antialiased bilinear for pictures and mask, nearest for depth)
    as float32 [0,1]."""
    n, (h, w) = batch["image"].shape[0], batch["image"].shape[-2:]
    return apply_draws(batch, [Draw((0, 0, w, h))] * n, size, out)
