"""The real-photo benchmark: fixed capture conditions, the differencing baseline, and scoring beside it.

A user with a fixed camera judges a model on their own pictures, taken again later: the camera nudged, the light
changed, the files JPEG-compressed. Composites of real background photos and real cutouts (made by
`maskdepth data make --bg-dir --fg-dir`) are scored under seeded capture conditions applied to the bg input:

- `aligned`:  the same pose; the bg re-exposed by up to 6% with sensor noise (sigma 2/255)
- `shifted`:  aligned, plus the bg moved 1-3 px in a random direction and rotated by up to 0.5 degrees
- `exposure`: aligned, plus exposure and per-channel white balance each changed by up to 15%
- `jpeg`:     aligned, then both pictures re-encoded as JPEG at quality 70

Every model figure stands beside the differencing baseline, max over channels of |image - bg| above the best
fixed threshold for that condition (chosen on the same data, so it is the baseline's best case): what a user has
without maskdepth. Masks are scored by the project's one set of metrics (metrics.py).
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine
from PIL import Image, ImageDraw

from maskdepth import align
from maskdepth.data.loader import make_loader
from maskdepth.metrics import Metrics
from maskdepth.viz import make_grid, overlay

CONDITIONS = ("aligned", "shifted", "exposure", "jpeg")
ALIGNED_GAIN = 0.06
NOISE_SIGMA = 2 / 255
SHIFT_PX = (1.0, 3.0)
ROTATION_DEG = 0.5
COLOUR_CHANGE = 0.15
JPEG_QUALITY = 70
MASK_KEYS = ("mask_iou", "mask_iou_per_image", "mask_boundary_f", "mask_precision", "mask_recall")


@dataclass(frozen=True)
class Pair:
    """One benchmark sample: uint8 (H,W,3) pictures and the true mask (H,W) float32 in [0,1]."""

    bg: np.ndarray
    image: np.ndarray
    mask: np.ndarray

    @functools.cached_property  # once per pair, however many conditions and scorers read it
    def contrast(self) -> dict[str, np.ndarray]:
        """(H,W) bool selections of the true foreground by how it stands out from the scene behind it, from the
        pair's own pictures: "same_brightness", within 10% (+5/255) of the brightness behind (what differencing by
        brightness misses), and "dark_on_brighter", darker than 45/255 in front of a scene 40/255 brighter (what
        reads as a shadow: dark clothes)."""
        fg = self.mask > 0.5
        li, lb = self.image.astype(np.float32).mean(2), self.bg.astype(np.float32).mean(2)
        return {"same_brightness": fg & (np.abs(li - lb) < 0.1 * lb + 5),
                "dark_on_brighter": fg & (li < 45) & (lb > li + 40)}


def _condition_seed(seed: int, condition: str) -> np.random.Generator:
    return np.random.default_rng([seed, CONDITIONS.index(condition)])


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _move(bg: np.ndarray, shift: tuple[float, float], angle_deg: float) -> np.ndarray:
    """bg translated by `shift` (x, y) pixels and rotated by `angle_deg` about its centre (bilinear, border
    pixels repeated), as a nudged camera sees it."""
    h, w = bg.shape[:2]
    x = torch.from_numpy(np.array(bg)).permute(2, 0, 1)[None].float()  # a copy: bg may be read-only
    centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]])
    m = get_rotation_matrix2d(centre, torch.tensor([float(angle_deg)]), torch.ones(1, 2))
    m[:, :, 2] += torch.tensor([shift])
    out = warp_affine(x, m, (h, w), mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def apply_condition(pair: Pair, condition: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(bg, image) as uint8 arrays under `condition`, drawing from `rng` (the same draws for the same rng)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition '{condition}'; known: {', '.join(CONDITIONS)}")
    bg, image = pair.bg, pair.image
    gain = 1 + rng.uniform(-ALIGNED_GAIN, ALIGNED_GAIN)
    gains = np.full(3, gain)
    if condition == "exposure":
        gains = gains * (1 + rng.uniform(-COLOUR_CHANGE, COLOUR_CHANGE)) * (
            1 + rng.uniform(-COLOUR_CHANGE, COLOUR_CHANGE, size=3))
    if condition == "shifted":
        r = rng.uniform(*SHIFT_PX)
        a = rng.uniform(0, 2 * math.pi)
        bg = _move(bg, (r * math.cos(a), r * math.sin(a)), rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    noise = rng.normal(0.0, NOISE_SIGMA * 255, size=bg.shape)
    bg = np.clip(bg.astype(np.float64) * gains + noise, 0, 255).round().astype(np.uint8)
    if condition == "jpeg":
        bg, image = _jpeg(bg, JPEG_QUALITY), _jpeg(image, JPEG_QUALITY)
    return bg, image


def conditioned_pairs(pairs: list[Pair], condition: str, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair under `condition`, seeded by (seed, condition) only, so figures are reproducible."""
    rng = _condition_seed(seed, condition)
    for pair in pairs:
        yield apply_condition(pair, condition, rng)


def difference_score(bg: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(H,W) uint8: the differencing baseline's score, max over channels of |image - bg|."""
    return np.abs(image.astype(np.int16) - bg.astype(np.int16)).max(axis=2).astype(np.uint8)


def best_threshold(scores: list[np.ndarray], masks: list[np.ndarray]) -> int:
    """The fixed threshold t (score >= t is foreground) with the best whole-set IoU against mask > 0.5."""
    pos = np.zeros(256, np.int64)
    neg = np.zeros(256, np.int64)
    for s, m in zip(scores, masks):
        fg = m > 0.5
        pos += np.bincount(s[fg], minlength=256)
        neg += np.bincount(s[~fg], minlength=256)
    tp = np.cumsum(pos[::-1])[::-1]  # tp[t]: positives with score >= t
    fp = np.cumsum(neg[::-1])[::-1]
    iou = tp / np.maximum(tp + fp + (pos.sum() - tp), 1)
    return int(np.argmax(iou[1:]) + 1)  # t = 0 would claim every pixel


def _metrics_input(prob: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One (H,W) probability mask and its truth as metrics.Metrics takes them: logits, depth, batch (no depth)."""
    p = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    zeros = torch.zeros_like(t)
    return torch.logit(p, eps=1e-6), zeros, {"mask": t, "depth": zeros, "depth_valid": zeros}


class MaskScore:
    """Whole-set and per-image mask metrics of binary or probability masks, through metrics.Metrics, and the
    recall within each contrast bucket given (`recall_<bucket>`, prob > threshold as the metrics count it)."""

    def __init__(self):
        self._m = Metrics(depth_max=1.0)
        self._found: dict[str, list[int]] = {}

    def add(self, prob: np.ndarray, mask: np.ndarray, buckets: dict[str, np.ndarray] | None = None) -> None:
        self._m.update(*_metrics_input(prob, mask))
        for name, sel in (buckets or {}).items():
            found = self._found.setdefault(name, [0, 0])
            found[0] += int((prob[sel] > self._m.threshold).sum())
            found[1] += int(sel.sum())

    def result(self) -> dict[str, float]:
        out = self._m.compute()
        return {**{k: round(out[k], 4) for k in MASK_KEYS},
                **{f"recall_{name}": round(hit / max(total, 1), 4) for name, (hit, total) in self._found.items()}}


class WorstCases:
    """The `n` composites with the lowest per-image mask IoU seen so far, for a picture of where a model fails."""

    def __init__(self, n: int = 8):
        self.n = n
        self.cases: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._m = Metrics(depth_max=1.0)

    def add(self, bg: np.ndarray, image: np.ndarray, mask: np.ndarray, prob: np.ndarray) -> None:
        iou = float(self._m.per_sample(*_metrics_input(prob, mask))["mask_iou"][0])  # as the scores count it
        if len(self.cases) < self.n or iou < self.cases[-1][0]:
            self.cases.append((iou, bg, image, mask > 0.5, prob > self._m.threshold))
            self.cases.sort(key=lambda c: c[0])
            del self.cases[self.n:]

    def picture(self) -> np.ndarray:
        """One row per case: bg as given, image, true mask, model's mask, and the image with the errors marked
        (red: foreground missed, blue: background taken), its IoU written in the corner."""
        rows = []
        for iou, bg, image, truth, found in self.cases:
            errors = overlay(overlay(image, truth & ~found, (255, 0, 0), 0.8), found & ~truth, (0, 96, 255), 0.8)
            tile = Image.fromarray(errors)
            ImageDraw.Draw(tile).text((2, 2), f"IoU {iou:.2f}", fill=(255, 255, 0))
            rows.append([bg, image, truth.astype(np.float32), found.astype(np.float32), np.asarray(tile)])
        return make_grid(rows, labels=["bg", "image", "truth", "model", "missed / taken"])


def registered_bgs(bgs: list[np.ndarray], images: list[np.ndarray]) -> list[np.ndarray]:
    """Each bg moved and recoloured onto its image by align.py as predict does it (the strip the moved bg does
    not cover taken from the image), as uint8 arrays."""
    def t(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    bg, image = t(bgs), t(images)
    return [_to_uint8(x) for x in align.apply(bg, align.register(bg, image), image)]


def _thresholded(diffs: list[np.ndarray], pairs: list[Pair]) -> dict:
    masks = [p.mask for p in pairs]
    t = best_threshold(diffs, masks)
    score = MaskScore()
    for s, p in zip(diffs, pairs):
        score.add((s >= t).astype(np.float32), p.mask, p.contrast)
    return {**score.result(), "threshold": t}


def _batches(pairs: list[Pair], condition: str, seed: int, batch_size: int
             ) -> Iterator[tuple[list[np.ndarray], list[np.ndarray], list[Pair]]]:
    """(bgs, images, pairs) of `pairs` under `condition`, `batch_size` at a time, conditioned as they stream."""
    part: list[tuple[np.ndarray, np.ndarray, Pair]] = []
    for k, (pair, (bg, image)) in enumerate(zip(pairs, conditioned_pairs(pairs, condition, seed))):
        part.append((bg, image, pair))
        if len(part) == batch_size or k == len(pairs) - 1:
            yield [b for b, _, _ in part], [i for _, i, _ in part], [p for _, _, p in part]
            part = []


def score_model(predictor, pairs: list[Pair], condition: str, seed: int = 0, batch_size: int = 16,
                worst: WorstCases | None = None) -> dict:
    """The model's mask metrics (a predict.Predictor, run with its own settings) on `pairs` under `condition`;
    `worst` collects the composites it does worst on."""
    score = MaskScore()
    for bgs, images, batch in _batches(pairs, condition, seed, batch_size):
        for pred, pair, bg, image in zip(predictor.predict_arrays(bgs, images, layers=False), batch, bgs, images):
            score.add(pred.mask_prob, pair.mask, pair.contrast)
            if worst is not None:
                worst.add(bg, image, pair.mask, pred.mask_prob)
    return score.result()


def score_baselines(pairs: list[Pair], condition: str, seed: int = 0, batch_size: int = 16) -> dict:
    """The differencing baseline on `pairs` under `condition`, at its best fixed threshold: {"baseline": with the
    bg as captured, "baseline_registered": after align.py's registration of the bg, what the network adds to}.
    The same for every model, so a league computes it once."""
    diffs, diffs_reg = [], []
    for bgs, images, _ in _batches(pairs, condition, seed, batch_size):
        diffs.extend(difference_score(b, i) for b, i in zip(bgs, images))
        diffs_reg.extend(difference_score(b, i) for b, i in zip(registered_bgs(bgs, images), images))
    return {"baseline": _thresholded(diffs, pairs), "baseline_registered": _thresholded(diffs_reg, pairs)}


def score_condition(predictor, pairs: list[Pair], condition: str, seed: int = 0, batch_size: int = 16,
                    baselines: dict | None = None, worst: WorstCases | None = None) -> dict:
    """The model and the differencing baselines on `pairs` under `condition`: {"model": metrics, "baseline",
    "baseline_registered" (score_baselines; pass `baselines` to reuse them), "margin_iou": model - baseline}."""
    out = {"model": score_model(predictor, pairs, condition, seed, batch_size, worst),
           **(baselines or score_baselines(pairs, condition, seed, batch_size))}
    out["margin_iou"] = round(out["model"]["mask_iou"] - out["baseline"]["mask_iou"], 4)
    return out


def load_pairs(data_dir: str | os.PathLike, limit: int | None = None) -> list[Pair]:
    """Every sample of a dataset as uint8 Pairs (the bg as stored: the conditions make its capture)."""
    pairs: list[Pair] = []
    for batch in make_loader(data_dir, "train", 32, None, train=False, workers=0):
        for bg, image, mask in zip(batch["bg"], batch["image"], batch["mask"]):
            pairs.append(Pair(bg=_to_uint8(bg), image=_to_uint8(image), mask=mask[0].numpy()))
            if limit is not None and len(pairs) >= limit:
                return pairs
    return pairs


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy()
