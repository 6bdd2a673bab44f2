"""Training losses: BCE, soft Dice, thin-part BCE, edge BCE, SSIM, L1, smooth L1, image-gradient loss,
scale-invariant log loss, multi-scale log-depth gradient matching, and their configured combination.

Every function computes in float32 (bf16 / fp16 inputs are cast up) and takes an optional `valid` map
(N,1,H,W), 1 where the pixel counts: the result is the mean over valid pixels, and 0 (not NaN) when none is
valid. Depth terms are meant for depth / depth_max, i.e. values in [0, 1], which SSIM's constants assume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from kornia.filters import spatial_gradient
from kornia.metrics import ssim as ssim_map
from torch import Tensor, nn

from maskdepth.errors import UserError

SSIM_WINDOW = 11  # Gaussian window, sigma 1.5 (kornia's fixed sigma): the SSIM paper's and the seeds' choice


def masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of `values` over pixels where `valid` is 1; 0 when there are none (so the loss stays finite)."""
    if valid is None:
        return values.mean()
    valid = valid.float().expand_as(values)
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def _fill_invalid(pred: Tensor, target: Tensor, valid: Tensor | None) -> Tensor:
    """Prediction with the target's value where depth is unknown, so windowed terms (SSIM, gradients)
    see no difference there and send no gradient into pixels that have no ground truth."""
    if valid is None:
        return pred
    return torch.where(valid > 0.5, pred, target)


def bce_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Binary cross-entropy on logits against a soft target in [0, 1]."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return masked_mean(per_pixel, valid)


def dice_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss, 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s), per image then averaged over the batch.

    `smooth` keeps an image with an empty target finite and rewards predicting it empty."""
    prob, target = torch.sigmoid(logits.float()), target.float()
    if valid is not None:
        prob, target = prob * valid, target * valid
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dims)
    total = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()


THIN_PX = 5  # parts of the true mask narrower than this (at the working size) are "thin": under the 1/4 grid


def thin_parts(target: Tensor, width: int = THIN_PX) -> Tensor:
    """(N,1,H,W) 1 on the foreground's thin parts (what a `width` x `width` opening of mask > 0.5 removes: rims,
    spokes, legs, fingers) and on the pixels next to them, else 0."""
    fg = (target.float() > 0.5).float()
    r = width // 2
    opened = F.max_pool2d(-F.max_pool2d(-fg, width, 1, r), width, 1, r)
    thin = fg * (1.0 - opened)
    return F.max_pool2d(thin, 3, 1, 1)


def thin_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BCE over the thin parts of the true mask and their neighbours only (thin_parts), so a part a few pixels
    wide weighs as much as a body however little of the area it covers; 0 when nothing is thin."""
    return bce_loss(logits, target, thin_parts(target))


def boundary_band(target: Tensor, radius: int = 1) -> Tensor:
    """(N,1,H,W) 1 within `radius` pixels of the edge of the true mask (mask > 0.5), on both sides, else 0."""
    fg = (target.float() > 0.5).float()
    k = 2 * radius + 1
    dilated = F.max_pool2d(fg, k, 1, radius)
    eroded = -F.max_pool2d(-fg, k, 1, radius)
    return dilated - eroded


def edge_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BCE over the pixels either side of the true mask's edge only (boundary_band), so a mask a pixel too wide
    or too narrow all round is charged as much as a missed body, though it covers little area; 0 with no edge."""
    return bce_loss(logits, target, boundary_band(target))


def ssim_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Structural dissimilarity clamp((1 - SSIM) / 2, 0, 1) (DenseDepth's form), for images in [0, 1]."""
    pred, target = pred.float(), target.float()
    pred = _fill_invalid(pred, target, valid)
    per_pixel = ((1.0 - ssim_map(pred, target, SSIM_WINDOW, max_val=1.0)) / 2).clamp(0.0, 1.0)
    return masked_mean(per_pixel, valid)


def l1_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean absolute error."""
    return masked_mean((pred.float() - target.float()).abs(), valid)


def smooth_l1_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Huber-style smooth L1. beta = 0.1 rather than torch's 1.0: on depth / depth_max every error is below 1,
    where beta = 1.0 would make the loss plain halved MSE."""
    per_pixel = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=beta)
    return masked_mean(per_pixel, valid)


def gradient_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Edge loss: |d/dx pred - d/dx target| + |d/dy pred - d/dy target| with normalised Sobel gradients."""
    pred, target = pred.float(), target.float()
    pred = _fill_invalid(pred, target, valid)
    diff = (spatial_gradient(pred, mode="sobel") - spatial_gradient(target, mode="sobel")).abs().sum(2)
    return masked_mean(diff, valid)


SILOG_LAMBDA = 0.85  # Eigen et al.'s and BTS's choice: mostly scale-invariant, 15% of the log-scale error kept
SILOG_EPS = 1e-3  # on depth / depth_max, i.e. 1.6 cm at 16 m: keeps the log finite at a zero prediction


def silog_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None, lam: float = SILOG_LAMBDA) -> Tensor:
    """Scale-invariant log loss sqrt(mean(g^2) - lam * mean(g)^2), g = log pred - log target, per image, then
    averaged: it charges relative error in the depth's shape (the near floor as much as a far wall) rather than
    its overall scale, which is what a camera profile fixes with one factor. 0 for an image with no valid pixel."""
    pred, target = pred.float(), target.float()
    g = torch.log(pred.clamp_min(0) + SILOG_EPS) - torch.log(target.clamp_min(0) + SILOG_EPS)
    w = torch.ones_like(g) if valid is None else valid.float()
    n = w.sum((1, 2, 3))
    mean = (g * w).sum((1, 2, 3)) / n.clamp_min(1)
    mean_sq = (g * g * w).sum((1, 2, 3)) / n.clamp_min(1)
    # the clamp keeps sqrt's gradient finite where g is constant (a pure scale error, lam = 1)
    per_image = (mean_sq - lam * mean * mean).clamp_min(1e-8).sqrt() * (n > 0)
    return per_image.mean()


LOGGRAD_SCALES = 4  # residual gradients at 1, 1/2, 1/4, 1/8: a floor's slope is seen over more than a few pixels


def log_gradient_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None,
                      scales: int = LOGGRAD_SCALES) -> Tensor:
    """Gradient matching on the log-depth residual r = log pred - log target, at `scales` scales (r average-pooled
    by 2 each time): mean |r(x+1) - r(x)| over valid neighbour pairs, horizontally and vertically, averaged over
    the scales. A per-image scale is a constant in r, so the loss ignores it; what it charges is the slope of
    planes (a floor's tilt, which fixes the camera height a profile solves) and the steps at occlusions."""
    pred, target = pred.float(), target.float()
    r = torch.log(pred.clamp_min(0) + SILOG_EPS) - torch.log(target.clamp_min(0) + SILOG_EPS)
    w = torch.ones_like(r) if valid is None else (valid.float() > 0.5).float()
    total = r.new_zeros(())
    for k in range(scales):
        if k:
            if min(r.shape[-2:]) < 4:
                break
            pooled_w = F.avg_pool2d(w, 2)
            r = F.avg_pool2d(r * w, 2) / pooled_w.clamp_min(1e-6)
            w = (pooled_w > 0.999).float()  # a coarse pixel counts only when all its fine pixels do
        wx, wy = w[..., :, 1:] * w[..., :, :-1], w[..., 1:, :] * w[..., :-1, :]
        dx = (r[..., :, 1:] - r[..., :, :-1]).abs() * wx
        dy = (r[..., 1:, :] - r[..., :-1, :]).abs() * wy
        total = total + (dx.sum() + dy.sum()) / (wx.sum() + wy.sum()).clamp_min(1.0)
    return total / scales


@dataclass
class LossWeights:
    """The config section [loss]; field names are the config keys.

    Defaults: the seeds' BCE + Dice for the mask, DenseDepth's 0.1 L1 + SSIM + gradient for the depth.
    mask_weight and depth_weight balance the two heads (the seeds' w1 and w2)."""

    bce: float = 1.0
    dice: float = 1.0
    mask_thin: float = 0.0  # thin_bce_loss: recall of parts a few pixels wide
    mask_edge: float = 0.0  # edge_bce_loss: the outline, where a blurred mask loses a pixel each side
    mask_ssim: float = 0.0
    depth_l1: float = 0.1
    depth_smooth_l1: float = 0.0
    depth_ssim: float = 1.0
    depth_grad: float = 1.0
    depth_silog: float = 0.0  # silog_loss: the depth's shape up to one scale, what calibration relies on
    depth_loggrad: float = 0.0  # log_gradient_loss: local slopes up to one scale (a floor's tilt)
    mask_weight: float = 1.0
    depth_weight: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise UserError(f"[loss] {f.name} = {value!r} is not a usable weight: "
                                "give a finite number >= 0")
            setattr(self, f.name, float(value))
        mask_on = self.mask_weight > 0 and sum(getattr(self, n) for n in MASK_TERMS) > 0
        depth_on = self.depth_weight > 0 and sum(getattr(self, n) for n in DEPTH_TERMS) > 0
        if not (mask_on or depth_on):
            raise UserError("[loss] every weight is 0, so nothing would be trained: give at least one "
                            "mask or depth term a weight > 0")


MASK_TERMS = ("bce", "dice", "mask_thin", "mask_edge", "mask_ssim")
DEPTH_TERMS = ("depth_l1", "depth_smooth_l1", "depth_ssim", "depth_grad", "depth_silog", "depth_loggrad")


class CombinedLoss(nn.Module):
    """mask_weight * (weighted mask terms) + depth_weight * (weighted depth terms on depth / depth_max,
    masked by depth_valid). Terms with weight 0 (or whose head has weight 0) are not computed."""

    def __init__(self, weights: LossWeights, depth_max: float):
        super().__init__()
        if not (math.isfinite(depth_max) and depth_max > 0):
            raise UserError(f"depth_max = {depth_max!r} must be a finite number > 0: set it to the dataset's "
                            "largest depth")
        self.weights = weights
        self.depth_max = float(depth_max)

    def forward(self, mask_logits: Tensor, depth: Tensor, batch: dict[str, Tensor]
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and each term's unweighted value (detached), plus the weighted "mask", "depth", "total"."""
        w = self.weights
        # Losses run in float32 even inside a bf16 autocast region (SSIM moments and gradients need it).
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            target_mask = batch["mask"]
            valid = batch["depth_valid"]
            pred_d = depth.float() / self.depth_max
            target_d = batch["depth"].float() / self.depth_max
            compute = {
                "bce": lambda: bce_loss(mask_logits, target_mask),
                "dice": lambda: dice_loss(mask_logits, target_mask),
                "mask_thin": lambda: thin_bce_loss(mask_logits, target_mask),
                "mask_edge": lambda: edge_bce_loss(mask_logits, target_mask),
                "mask_ssim": lambda: ssim_loss(torch.sigmoid(mask_logits.float()), target_mask),
                "depth_l1": lambda: l1_loss(pred_d, target_d, valid),
                "depth_smooth_l1": lambda: smooth_l1_loss(pred_d, target_d, valid),
                "depth_ssim": lambda: ssim_loss(pred_d, target_d, valid),
                "depth_grad": lambda: gradient_loss(pred_d, target_d, valid),
                "depth_silog": lambda: silog_loss(pred_d, target_d, valid),
                "depth_loggrad": lambda: log_gradient_loss(pred_d, target_d, valid),
            }
            head_on = {n: w.mask_weight > 0 for n in MASK_TERMS} | {n: w.depth_weight > 0 for n in DEPTH_TERMS}
            terms = {name: fn() for name, fn in compute.items() if head_on[name] and getattr(w, name) > 0}
            zero = mask_logits.new_zeros((), dtype=torch.float32)
            mask = sum((getattr(w, n) * terms[n] for n in MASK_TERMS if n in terms), zero)
            depth_total = sum((getattr(w, n) * terms[n] for n in DEPTH_TERMS if n in terms), zero)
            total = w.mask_weight * mask + w.depth_weight * depth_total
        log = {name: value.detach() for name, value in terms.items()}
        log.update(mask=mask.detach(), depth=depth_total.detach(), total=total.detach())
        return total, log
