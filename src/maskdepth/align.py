"""Registering the empty-scene capture to the picture: a nudged camera and changed light, undone before the model.

A fixed camera is rarely quite fixed: it is bumped by a pixel or two, turned by a fraction of a degree, and the
light or the auto exposure changes between the empty-scene capture (bg) and the picture. Both make the whole
frame differ from the bg, which a model (or differencing) then reads as foreground. `register` estimates, for each
pair, the similarity transform (shift, rotation, scale) and the per-channel gain and offset that best map the bg
onto the picture, by robust Gauss-Newton (iteratively reweighted least squares, Cauchy weights) from a coarse to a
fine pyramid level: the foreground is where the two still differ, so it is down-weighted as an outlier rather
than masked in advance. That holds with a foreground over half the frame (a person right in front of the camera):
the Cauchy scale comes from the residuals' lower quartile, not their median. `apply` resamples the bg with
the result; where the moved bg does not reach (the strip a turned camera newly sees), it takes the picture's own
pixels, since the empty scene there was never seen.

Only small motions are sought (a fixed camera, nudged); an estimate beyond `MAX_SHIFT` / `MAX_TURN` / `MAX_ZOOM`, or
one that does not lower the robust cost, is replaced by the photometric part alone on the unmoved bg. Only what one
camera's exposure and white balance can do is sought too: gains or offsets beyond `MAX_GAIN` / `MAX_BIAS` mean
the fit recoloured the bg into a foreground that fills the frame, so the photometric fit of the unmoved bg is used
instead, or the bg as captured where that is beyond them too. A colour clipped by either capture is only a bound:
it is left out of the fit, and where the bg's capture clipped, a picture brighter than the recoloured bound is
taken as the scene. A foreground over three quarters of the frame can still pass for a change of light within
them. A featureless bg leaves the motion unobservable: the damping keeps it at zero.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Estimation runs on the pair shrunk to at most this side (the motion is sought to a fraction of its pixel) ...
ESTIMATE_SIDE = 128
# ... from a coarsest level of about this side, each level twice the last.
COARSEST_SIDE = 40
COARSE_ITERATIONS = 6  # Gauss-Newton steps at the coarsest level, where the motion is found ...
FINE_ITERATIONS = 2  # ... and at each finer one, where it is only refined
DAMPING = 1e-3  # Levenberg-Marquardt damping, relative to the normal matrix's diagonal
# bicubic keeps the moved bg as sharp as the picture: bilinear blurs a half-pixel shift, and the blur reads as a
# difference along every edge
APPLY_MODE = "bicubic"
MAX_SHIFT = 0.05  # of the frame's longer side
MAX_TURN = math.radians(3.0)
MAX_ZOOM = 0.05
# The Cauchy scale comes from this quantile of the residuals, so that it is the empty scene's while a foreground
# covers up to three quarters of the frame in principle (the median's breaks at half; in practice the fit holds
# to about 55%); the factor gives the scale the median rule had on pure noise (3 colour channels: chi-square
# quantiles 2.366 at 0.5, 1.213 at 0.25).
SCALE_QUANTILE = 0.25
SCALE_FACTOR = 2.0 * math.sqrt(2.366 / 1.213)
# A fixed camera's exposure and white balance change the bg's colours by at most these (gain, offset in [0, 1])
MAX_GAIN = 2.5
MAX_BIAS = 0.25
# A bg pixel this bright in a channel was clipped by the sensor: the scene there was at least that bright, so the
# recoloured value is only a lower bound on it (`apply`)
SATURATED = 0.98


@dataclass(frozen=True)
class Registration:
    """Per pair (N,...) tensors: where the picture's pixel (x, y) lies in the bg, and how its colours map.

    With X = x - cx, Y = y - cy about the frame centre (pixels of the frame `size` it was estimated for), the bg
    is sampled at ((1+a) X - b Y + tx + cx, b X + (1+a) Y + ty + cy) and then scaled by `gain` and offset by
    `bias` (colours in [0, 1])."""

    motion: torch.Tensor  # (N,4) a, b, tx, ty
    gain: torch.Tensor  # (N,3)
    bias: torch.Tensor  # (N,3)
    size: tuple[int, int]  # (H, W)

    def shift_px(self) -> torch.Tensor:
        """(N,) the motion's largest displacement of a frame pixel, in pixels."""
        h, w = self.size
        a, b, tx, ty = self.motion.unbind(1)
        x = torch.tensor([-1.0, 1.0, -1.0, 1.0], device=self.motion.device)[None] * (w - 1) / 2  # the corners
        y = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=self.motion.device)[None] * (h - 1) / 2
        dx = a[:, None] * x - b[:, None] * y + tx[:, None]
        dy = b[:, None] * x + a[:, None] * y + ty[:, None]
        return torch.sqrt(dx * dx + dy * dy).amax(1)

    def describe(self, i: int = 0) -> dict[str, object]:
        """Pair i's registration in words a user can check: shift (px), rotation (deg), scale, gains, offsets."""
        a, b, tx, ty = (float(v) for v in self.motion[i])
        return {"shift_px": [round(tx, 3), round(ty, 3)],
                "rotation_deg": round(math.degrees(math.atan2(b, 1 + a)), 4),
                "scale": round(math.hypot(1 + a, b), 5),
                "gain": [round(float(v), 4) for v in self.gain[i]],
                "bias": [round(float(v), 4) for v in self.bias[i]],
                "size": list(self.size)}


def _shrunk(x: torch.Tensor, side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return x
    return F.interpolate(x, size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear",
                         align_corners=False, antialias=True)


@functools.lru_cache(maxsize=16)  # read only; a level's grid is needed at every step
def _centred_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return xs - (w - 1) / 2, ys - (h - 1) / 2


def _warp(bg: torch.Tensor, motion: torch.Tensor, mode: str = "bilinear", margin: float = 0.0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """bg (N,C,H,W) sampled through `motion` (in this frame's pixels), and which samples fell inside the bg (or
    within `margin` pixels beyond its outer pixel centres)."""
    n, _, h, w = bg.shape
    x, y = _centred_grid(h, w, bg.device)
    a, b, tx, ty = (m.view(n, 1, 1) for m in motion.unbind(1))
    u = (1 + a) * x - b * y + tx
    v = b * x + (1 + a) * y + ty
    # align_corners=True: normalised -1 and 1 are the first and last pixel centres
    grid = torch.stack((u / ((w - 1) / 2), v / ((h - 1) / 2)), dim=-1)
    inside = ((u.abs() <= (w - 1) / 2 + margin) & (v.abs() <= (h - 1) / 2 + margin))
    return F.grid_sample(bg, grid, mode=mode, padding_mode="border", align_corners=True), inside


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences in x and y (pixels), zero at the frame's edge."""
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., 1:-1] = (x[..., 2:] - x[..., :-2]) / 2
    gy[..., 1:-1, :] = (x[..., 2:, :] - x[..., :-2, :]) / 2
    return gx, gy


def _residual(bg: torch.Tensor, image: torch.Tensor, motion: torch.Tensor,
              photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(residual (N,C,H,W), the moved bg, which of its samples fell inside the bg and are clipped in neither capture)
    of `image` against `bg` moved by `motion` and recoloured by `photo` (N,6: gains then offsets). A clipped colour
    is only a bound on the scene's, so it says nothing about the gain: a bg captured 30% brighter clips a fifth of
    a bright room, and fitting those pixels pulls the gain towards 1."""
    n = bg.shape[0]
    warped, inside = _warp(bg, motion)
    inside = inside & (torch.maximum(warped, image).amax(1) < SATURATED)
    r = photo[:, :3].view(n, 3, 1, 1) * warped + photo[:, 3:].view(n, 3, 1, 1) - image
    return r, warped, inside


def _scale(e2: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(N,) Cauchy scale from a low quantile of the residual magnitude (e2: squared, (N,H,W)), floored so that
    clean pairs are not over-fitted. Not the median: a foreground filling more than half the frame (a person
    close to the camera) would set the scale, every pixel would then weigh alike, and the fit would recolour the
    bg into the foreground."""
    q = torch.stack([torch.quantile(ei[m], SCALE_QUANTILE) if m.any() else ei.new_tensor(0.0)
                     for ei, m in zip(e2, inside)])
    return (SCALE_FACTOR * q.sqrt()).clamp_min(0.02)


def _level(bg: torch.Tensor, image: torch.Tensor, motion: torch.Tensor, photo: torch.Tensor, iterations: int,
           fix_motion: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`iterations` robust Gauss-Newton steps at one pyramid level; motion (N,4) in this level's pixels, photo
    (N,6) gains then offsets. `fix_motion` fits the photometric part alone."""
    n, c, h, w = bg.shape
    x, y = _centred_grid(h, w, bg.device)
    radius = max(h, w) / 2  # rotation and zoom are solved for as displacements at this radius (pixels)
    to_motion = torch.tensor([1 / radius, 1 / radius, 1.0, 1.0], device=bg.device)
    # A channel's residual depends on the motion and on that channel's gain and offset alone, so the normal
    # equations are summed per channel over (motion, gain_c, bias_c) and scattered into the whole system.
    m = 0 if fix_motion else 4
    places = [torch.tensor(list(range(m)) + [m + k, m + c + k], device=bg.device) for k in range(c)]
    ones = torch.ones_like(bg)
    for _ in range(iterations):
        r, warped, inside = _residual(bg, image, motion, photo)
        e2 = (r * r).sum(1)
        wgt = (inside / (1 + e2 / _scale(e2, inside).view(-1, 1, 1) ** 2)).flatten(1)[:, None, None]  # (N,1,1,HW)
        cols = []
        if not fix_motion:
            gx, gy = _gradients(warped)
            gain = photo[:, :3].view(n, 3, 1, 1)
            gx, gy = gain * gx, gain * gy
            cols += [(gx * x + gy * y) / radius, (gy * x - gx * y) / radius, gx, gy]
        jac = torch.stack(cols + [warped, ones], dim=2).flatten(3)  # (N,C,P_c,HW)
        wj = jac * wgt
        per_channel = torch.matmul(wj, jac.transpose(2, 3)).double()  # (N,C,P_c,P_c)
        rhs_c = torch.matmul(wj, r.flatten(2).unsqueeze(3)).squeeze(3).double()  # (N,C,P_c)
        size = m + 2 * c
        normal = torch.zeros(n, size, size, dtype=torch.float64, device=bg.device)
        rhs = torch.zeros(n, size, dtype=torch.float64, device=bg.device)
        for k, ix in enumerate(places):
            normal[:, ix[:, None], ix[None, :]] += per_channel[:, k]
            rhs[:, ix] += rhs_c[:, k]
        normal = normal + torch.diag_embed(DAMPING * torch.diagonal(normal, dim1=1, dim2=2) + 1e-9)
        step = -torch.linalg.solve(normal, rhs).float()
        if not fix_motion:
            motion = motion + step[:, :4] * to_motion
        photo = photo + step[:, m:]
    return motion, photo


def register(bg: torch.Tensor, image: torch.Tensor) -> Registration:
    """The registration of each bg (N,3,H,W, in [0,1]) onto its picture, for frames of the pictures' size."""
    if bg.shape != image.shape or bg.dim() != 4 or bg.shape[1] != 3:
        raise ValueError(f"register: bg {tuple(bg.shape)} and image {tuple(image.shape)} must both be (N,3,H,W)")
    n, _, h, w = image.shape
    bg_s, im_s = _shrunk(bg.float(), ESTIMATE_SIDE), _shrunk(image.float(), ESTIMATE_SIDE)
    levels = [(bg_s, im_s)]
    while max(levels[-1][0].shape[-2:]) > 2 * COARSEST_SIDE:
        levels.append((F.avg_pool2d(levels[-1][0], 2), F.avg_pool2d(levels[-1][1], 2)))
    device = bg.device
    motion = torch.zeros(n, 4, device=device)
    photo_identity = torch.cat([torch.ones(n, 3, device=device), torch.zeros(n, 3, device=device)], 1)
    photo = photo_identity
    prev_side = None
    for b_l, i_l in reversed(levels):
        side = b_l.shape[-1]
        if prev_side is not None:
            motion = motion * torch.tensor([1.0, 1.0, side / prev_side, side / prev_side], device=device)
        motion, photo = _level(b_l, i_l, motion, photo, FINE_ITERATIONS if prev_side else COARSE_ITERATIONS)
        prev_side = side
    # judged at the finest estimation level against the photometric fit of the unmoved bg (refined from this fit's
    # light where that is plausible, else from none), or the bg as captured where that fit is not plausible either
    light_ok = _plausible_light(photo)
    still = torch.zeros_like(motion)
    photo_still = _level(bg_s, im_s, still, torch.where(light_ok.view(-1, 1), photo, photo_identity),
                         FINE_ITERATIONS, fix_motion=True)[1]
    photo_still = torch.where(_plausible_light(photo_still).view(-1, 1), photo_still, photo_identity)
    fs = w / bg_s.shape[-1]  # estimation pixels -> frame pixels
    moved = _cost(bg_s, im_s, motion, photo)
    unmoved = _cost(bg_s, im_s, still, photo_still)
    motion_full = motion * torch.tensor([1.0, 1.0, fs, fs], device=device)
    reg = Registration(motion=motion_full, gain=photo[:, :3], bias=photo[:, 3:], size=(h, w))
    a, b = motion[:, 0], motion[:, 1]
    plausible = ((reg.shift_px() <= MAX_SHIFT * max(h, w)) & (torch.atan2(b, 1 + a).abs() <= MAX_TURN)
                 & ((torch.hypot(1 + a, b) - 1).abs() <= MAX_ZOOM) & (moved < unmoved)
                 & torch.isfinite(motion).all(1) & light_ok)
    keep = plausible.view(-1, 1)
    return Registration(motion=torch.where(keep, motion_full, torch.zeros_like(motion_full)),
                        gain=torch.where(keep, photo[:, :3], photo_still[:, :3]),
                        bias=torch.where(keep, photo[:, 3:], photo_still[:, 3:]), size=(h, w))


def _plausible_light(photo: torch.Tensor) -> torch.Tensor:
    """(N,) bool: gains and offsets (N,6) that a changed exposure or white balance of one camera can give. Beyond
    them the fit has explained a foreground filling the frame by recolouring the bg, and none is better."""
    gain, bias = photo[:, :3], photo[:, 3:]
    return (torch.isfinite(photo).all(1) & (gain >= 1 / MAX_GAIN).all(1) & (gain <= MAX_GAIN).all(1)
            & (bias.abs() <= MAX_BIAS).all(1))


def _cost(bg: torch.Tensor, image: torch.Tensor, motion: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """(N,) mean Cauchy cost (scale 0.05) of the per-pixel residual magnitude over the pixels that sampled the bg."""
    r, _, inside = _residual(bg, image, motion, photo)
    cost = torch.log1p((r * r).sum(1) / 0.05 ** 2) * inside
    return cost.sum((1, 2)) / inside.sum((1, 2)).clamp_min(1)


def light_settings() -> dict[str, float]:
    """The constants of the photometric fit, for the browser page's own copy of it (web/camera.html), which fits
    the light of an unmoved bg at its working size in this many reweighted steps."""
    return {"saturated": SATURATED, "scale_quantile": SCALE_QUANTILE, "scale_factor": SCALE_FACTOR,
            "max_gain": MAX_GAIN, "max_bias": MAX_BIAS, "iterations": COARSE_ITERATIONS + FINE_ITERATIONS}


def apply(bg: torch.Tensor, reg: Registration, image: torch.Tensor | None = None) -> torch.Tensor:
    """bg (N,3,H,W) in [0,1], moved and recoloured onto its picture; H x W may differ from the registration's
    frame (the motion is rescaled to it). With `image` (the pictures, the same shape), the strip at the frame's
    edge that the moved bg does not cover takes the picture's own pixels: the empty scene was not seen there, so
    nothing there is evidence of a change (repeating the bg's border pixels instead reads as foreground). The
    cost: within that strip (as wide as the camera moved, a pixel or three) a foreground is found from its
    surroundings alone, not from a difference."""
    n, _, h, w = bg.shape
    rh, rw = reg.size
    motion = reg.motion.to(bg.device) * torch.tensor([1.0, 1.0, (w - 1) / max(rw - 1, 1), (h - 1) / max(rh - 1, 1)],
                                                    device=bg.device)
    inside = None
    if torch.count_nonzero(motion) == 0:
        out = bg
    else:
        out, inside = _warp(bg, motion, APPLY_MODE, margin=0.5)  # the outer pixels' own half is still seen
    clipped = None if image is None else out >= SATURATED  # before the recolouring: the capture's own clipping
    out = (reg.gain.to(bg.device).view(n, 3, 1, 1) * out + reg.bias.to(bg.device).view(n, 3, 1, 1)).clamp(0, 1)
    if image is None:
        return out
    image = image.to(out.dtype)
    # a bg captured brighter than the picture clipped its highlights, and the gain that maps it onto the picture
    # darkens them below the scene's true colour: where the picture is brighter than that bound it is the scene
    out = torch.where(clipped, torch.maximum(out, image), out)
    if inside is not None:
        out = torch.where(inside[:, None], out, image)
    return out
