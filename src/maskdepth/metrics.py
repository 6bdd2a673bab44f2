"""Whole-set evaluation metrics for the mask and the depth, accumulated as sums and correct under DDP.

Every metric is a ratio of sums over the whole set (pixels pooled over all images), never a mean of
per-batch values, so the result does not depend on how the set was split into batches or ranks. `update`
adds one batch's sums (float64) on the batch's device without a host sync; `compute` all-reduces the sums
when torch.distributed is initialised and forms the ratios.

Conventions: the mask prediction is sigmoid(logits) > threshold, the target is mask > 0.5; a ratio 0/0
(nothing to find and nothing claimed) counts as perfect, 1. Depth metrics use pixels with depth_valid and
target depth > 0; for the log and ratio metrics the prediction is clamped to >= 1e-6 * depth_max.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from kornia.metrics import ssim as ssim_map
from torch import Tensor

from maskdepth.errors import UserError

BOUNDARY_TOLERANCE_PX = 2
SSIM_WINDOW = 11

# name -> (description, higher_is_better), in table order
METRIC_NAMES: dict[str, tuple[str, bool]] = {
    "mask_iou": ("mask IoU (intersection over union), whole set", True),
    "mask_iou_per_image": ("mask IoU averaged over images", True),
    "mask_dice": ("mask Dice (F1), whole set", True),
    "mask_precision": ("mask precision", True),
    "mask_recall": ("mask recall", True),
    "mask_boundary_f": (f"mask boundary F-score (edges matched within {BOUNDARY_TOLERANCE_PX} px)", True),
    "depth_rmse": ("depth RMSE, dataset unit", False),
    "depth_mae": ("depth MAE, dataset unit", False),
    "depth_absrel": ("depth mean |pred - gt| / gt", False),
    "depth_sqrel": ("depth mean (pred - gt)^2 / gt", False),
    "depth_rmse_log": ("depth RMSE of log depth", False),
    "depth_delta1": ("share of pixels with max(pred/gt, gt/pred) < 1.25", True),
    "depth_delta2": ("share of pixels with max(pred/gt, gt/pred) < 1.25^2", True),
    "depth_delta3": ("share of pixels with max(pred/gt, gt/pred) < 1.25^3", True),
    "depth_ssim": ("depth SSIM on depth / depth_max (11x11 Gaussian, sigma 1.5)", True),
    # Not 1 for a perfect prediction (it is mean(t^2) / mean(t) then): kept only to compare with the seeds.
    "depth_dice": ("seeds' depth Dice 2 sum(p t) / (sum p + sum t) on depth / depth_max", True),
}
DEPTH_METRICS = [name for name in METRIC_NAMES if name.startswith("depth_")]
METRIC_NAMES.update({"aligned_" + name: (METRIC_NAMES[name][0] + ", after per-image scale-and-shift alignment",
                                         METRIC_NAMES[name][1]) for name in DEPTH_METRICS})

# Per-sample sums, in column order.
_MASK_SUMS = ("tp", "fp", "fn", "bnd_pred_hit", "bnd_pred", "bnd_gt_hit", "bnd_gt")
_DEPTH_SUMS = ("n", "se", "ae", "absrel", "sqrel", "se_log", "d1", "d2", "d3", "ssim", "pt", "p", "t")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 1.0


def _erode(x: Tensor) -> Tensor:
    # max-pool pads with -inf, so outside the picture never erodes: the image border is not an edge.
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def _dilate(x: Tensor, radius: int) -> Tensor:
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)


def boundary(binary: Tensor) -> Tensor:
    """Boundary pixels of a binary (N,1,H,W) float mask: in the mask, with one of its 8 neighbours outside."""
    return binary - _erode(binary)


def _iou(mask_sums: Tensor) -> Tensor:
    """Per-image IoU from `_mask_sums` rows; an image with nothing predicted and nothing to find scores 1."""
    tp, fp, fn = mask_sums[:, 0], mask_sums[:, 1], mask_sums[:, 2]
    union = tp + fp + fn
    return torch.where(union > 0, tp / union.clamp_min(1.0), torch.ones_like(union))


def _mask_sums(prob: Tensor, target: Tensor, threshold: float) -> Tensor:
    """(N, len(_MASK_SUMS)) float64 sums per image."""
    pred = (prob > threshold).float()
    gt = (target > 0.5).float()
    pred_b, gt_b = boundary(pred), boundary(gt)
    parts = [
        pred * gt, pred * (1 - gt), (1 - pred) * gt,
        pred_b * _dilate(gt_b, BOUNDARY_TOLERANCE_PX), pred_b,
        gt_b * _dilate(pred_b, BOUNDARY_TOLERANCE_PX), gt_b,
    ]
    return torch.stack([p.sum(dim=(1, 2, 3), dtype=torch.float64) for p in parts], dim=1)


def align_scale_shift(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """s * pred + t with (s, t) per image from least squares over valid pixels (for relative depth).

    An image whose valid prediction is constant gets s = 0, t = mean target; one with no valid pixel, s = t = 0."""
    p, g, m = pred.double(), target.double(), valid.double()
    dims = (1, 2, 3)
    n = m.sum(dims)
    sp, sg = (m * p).sum(dims), (m * g).sum(dims)
    spp, spg = (m * p * p).sum(dims), (m * p * g).sum(dims)
    det = n * spp - sp * sp
    ok = det > 1e-12 * (n * spp).clamp_min(1e-300)
    s = torch.where(ok, (n * spg - sp * sg) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    t = (sg - s * sp) / n.clamp_min(1.0)
    return (s.view(-1, 1, 1, 1) * p + t.view(-1, 1, 1, 1)).to(pred.dtype)


def _depth_sums(pred: Tensor, target: Tensor, valid: Tensor, depth_max: float) -> Tensor:
    """(N, len(_DEPTH_SUMS)) float64 sums per image over valid pixels with target > 0."""
    m = ((valid > 0.5) & (target > 0)).float()
    gt = torch.where(m > 0, target, torch.ones_like(target))  # keeps divisions and logs finite off the mask
    err = pred - target
    pos = pred.clamp_min(1e-6 * depth_max)
    ratio = torch.maximum(pos / gt, gt / pos)
    pred_n = torch.where(m > 0, pred, target) / depth_max  # same filling as the SSIM loss
    target_n = target / depth_max
    ssim = ssim_map(pred_n, target_n, SSIM_WINDOW, max_val=1.0)
    parts = [
        m, err * err, err.abs(), err.abs() / gt, err * err / gt,
        (torch.log(pos) - torch.log(gt)) ** 2,
        (ratio < 1.25).float(), (ratio < 1.25**2).float(), (ratio < 1.25**3).float(),
        ssim, pred_n * target_n, pred_n, target_n,
    ]
    return torch.stack([(p * m).sum(dim=(1, 2, 3), dtype=torch.float64) for p in parts], dim=1)


def _depth_metrics(s: dict[str, float], prefix: str = "") -> dict[str, float]:
    n = s["n"]
    if n == 0:
        return {prefix + name: math.nan for name in DEPTH_METRICS}
    out = {
        "depth_rmse": math.sqrt(s["se"] / n),
        "depth_mae": s["ae"] / n,
        "depth_absrel": s["absrel"] / n,
        "depth_sqrel": s["sqrel"] / n,
        "depth_rmse_log": math.sqrt(s["se_log"] / n),
        "depth_delta1": s["d1"] / n,
        "depth_delta2": s["d2"] / n,
        "depth_delta3": s["d3"] / n,
        "depth_ssim": s["ssim"] / n,
        "depth_dice": _ratio(2 * s["pt"], s["p"] + s["t"]),
    }
    return {prefix + name: value for name, value in out.items()}


class Metrics:
    """Accumulates mask and depth metrics over a whole set; `aligned` adds the scale-and-shift-aligned
    depth metrics (prefix "aligned_"), meant for relative depth."""

    def __init__(self, depth_max: float, threshold: float = 0.5, aligned: bool = False):
        if not (math.isfinite(depth_max) and depth_max > 0):
            raise UserError(f"depth_max = {depth_max!r} must be a finite number > 0: set it to the dataset's "
                            "largest depth")
        if not 0.0 < threshold < 1.0:
            raise UserError(f"mask threshold = {threshold!r} must lie strictly between 0 and 1")
        self.depth_max = float(depth_max)
        self.threshold = float(threshold)
        self.aligned = aligned
        self._names = ["images", "iou_sum", *_MASK_SUMS, *_DEPTH_SUMS]
        if aligned:
            self._names += ["aligned_" + name for name in _DEPTH_SUMS]
        self._sums: Tensor | None = None

    def reset(self) -> None:
        self._sums = None

    def _per_sample_sums(self, mask_logits: Tensor, depth: Tensor, batch: dict[str, Tensor]
                         ) -> dict[str, Tensor]:
        target_d = batch["depth"].float()
        valid = batch["depth_valid"].float()
        pred_d = depth.float()
        out = {"mask": _mask_sums(torch.sigmoid(mask_logits.float()), batch["mask"].float(), self.threshold),
               "depth": _depth_sums(pred_d, target_d, valid, self.depth_max)}
        if self.aligned:
            aligned = align_scale_shift(pred_d, target_d, (valid > 0.5) & (target_d > 0))
            out["aligned"] = _depth_sums(aligned, target_d, valid, self.depth_max)
        return out

    @torch.no_grad()
    def update(self, mask_logits: Tensor, depth: Tensor, batch: dict[str, Tensor]) -> None:
        """Add one batch (any device, any float dtype)."""
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            sums = self._per_sample_sums(mask_logits, depth, batch)
        iou = _iou(sums["mask"])
        head = torch.stack([torch.ones_like(iou), iou], dim=1)
        row = torch.cat([head, *sums.values()], dim=1).sum(0)
        self._sums = row if self._sums is None else self._sums + row.to(self._sums.device)

    def compute(self) -> dict[str, float]:
        """The metrics over everything updated so far, on all ranks when torch.distributed is initialised."""
        sums = torch.zeros(len(self._names), dtype=torch.float64) if self._sums is None else self._sums.clone()
        if dist.is_available() and dist.is_initialized():
            # NCCL reduces only CUDA tensors; gloo and the others take CPU ones.
            sums = sums.cuda() if dist.get_backend() == "nccl" else sums.cpu()
            dist.all_reduce(sums)
        s = dict(zip(self._names, sums.cpu().tolist()))
        out = {
            "mask_iou": _ratio(s["tp"], s["tp"] + s["fp"] + s["fn"]),
            "mask_iou_per_image": s["iou_sum"] / s["images"] if s["images"] > 0 else math.nan,
            "mask_dice": _ratio(2 * s["tp"], 2 * s["tp"] + s["fp"] + s["fn"]),
            "mask_precision": _ratio(s["tp"], s["tp"] + s["fp"]),
            "mask_recall": _ratio(s["tp"], s["tp"] + s["fn"]),
        }
        bp, br = _ratio(s["bnd_pred_hit"], s["bnd_pred"]), _ratio(s["bnd_gt_hit"], s["bnd_gt"])
        out["mask_boundary_f"] = 2 * bp * br / (bp + br) if bp + br > 0 else 0.0
        out.update(_depth_metrics(s))
        if self.aligned:
            out.update(_depth_metrics({k: s["aligned_" + k] for k in _DEPTH_SUMS}, "aligned_"))
        return out

    @torch.no_grad()
    def per_sample(self, mask_logits: Tensor, depth: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-image mask_iou, depth_rmse, depth_absrel (N,) float32 on the input's device, for worst-k
        pictures (plus aligned_ depth values when `aligned`). Depth values are NaN for an image without
        valid depth."""
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            sums = self._per_sample_sums(mask_logits, depth, batch)
        out = {"mask_iou": _iou(sums["mask"])}
        for prefix, key in (("", "depth"), ("aligned_", "aligned")):
            if key not in sums:
                continue
            d = sums[key]
            n = d[:, 0]
            n_safe = torch.where(n > 0, n, torch.full_like(n, math.nan))
            out[prefix + "depth_rmse"] = torch.sqrt(d[:, 1] / n_safe)
            out[prefix + "depth_absrel"] = d[:, 3] / n_safe
        return {name: value.float() for name, value in out.items()}
