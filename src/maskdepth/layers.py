"""Two depth layers and the foreground's regions in metres.

- The empty scene's depth: the model run on (bg, bg), once per distinct bg (cached by content), is the depth of
  what is behind the foreground (`depth_bg.png`).
- With a camera profile (camera.py) both layers are metric with the profile's one scale, and a frame's depth
  outside the foreground is the empty scene's: the static scene is the same in every frame, it cannot flicker.
  Inside the mask it is the model's depth of the frame, never farther than the scene behind it.
- With a profile, each foreground region (a connected component of the mask) gets its floor contact (the lowest
  point of the region, its ray met with the floor plane): z-depth, distance from the camera along the ray, and
  its height in metres, focal_px * height_m / depth as in the composition rule (docs/ARCHITECTURE.md), with the
  pixel height taken from the soft mask (sub-pixel).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from maskdepth.camera import CameraProfile, check_profile, check_size, load_profile, model_fingerprint
from maskdepth.codecs import encode_depth_png
from maskdepth.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from maskdepth.predict import DepthInfo, Prediction, Predictor

LAYER_FILES = ("depth_bg.png", "objects.json")
# Regions smaller than this fraction of the picture (or 16 px) are specks of the mask, not objects.
MIN_REGION_FRACTION = 0.0005
SCENE_CACHE_SIZE = 8


def attach_camera(predictor: Predictor, camera: str | os.PathLike | CameraProfile | None) -> CameraProfile | None:
    """Load and check a profile for `predictor`'s model; its depth becomes metres with the profile's scale."""
    if camera is None:
        return None
    where = str(camera) if isinstance(camera, (str, os.PathLike)) else "camera profile"
    profile = camera if isinstance(camera, CameraProfile) else load_profile(camera)
    check_profile(profile, model_fingerprint(predictor.model), where)
    dmax = float(profile.metric(np.float32(predictor.depth.max)))
    predictor.depth = dataclasses.replace(predictor.depth, unit="metres", max=dmax,
                                          scale=max(predictor.depth.scale, dmax / 65535))
    return profile


def empty_scene_depth(predictor: Predictor, bgs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's own depth (its unit, not scaled) of each empty scene, (H, W) float32: one run per distinct bg,
    remembered across calls for the last few bgs."""
    cache = predictor.scene_depth_cache
    keys = [hashlib.sha1(np.ascontiguousarray(b).data, usedforsecurity=False).hexdigest() + str(b.shape)
            for b in bgs]
    todo = {k: b for k, b in zip(keys, bgs) if k not in cache}
    items = list(todo.items())
    for i in range(0, len(items), predictor.batch_size):
        chunk = [b for _, b in items[i:i + predictor.batch_size]]
        for (k, _), pred in zip(items[i:i + predictor.batch_size], predictor._run(chunk, chunk, layers=False)):
            cache[k] = pred.depth
    out = [cache[k] for k in keys]
    while len(cache) > max(SCENE_CACHE_SIZE, len(set(keys))):
        cache.pop(next(iter(cache)))
    return out


def add_layers(predictor: Predictor, bgs: list[np.ndarray], preds: list[Prediction]) -> None:
    """Give each prediction its empty-scene layer; with the predictor's camera, metric depth and its objects."""
    scenes = empty_scene_depth(predictor, bgs)
    profile: CameraProfile | None = predictor.camera
    for pred, scene in zip(preds, scenes):
        if scene.shape != pred.depth.shape:  # a bg of another size, resampled (resize_bg): its depth likewise
            scene = F.interpolate(torch.from_numpy(scene)[None, None], size=pred.depth.shape, mode="bilinear",
                                  align_corners=False)[0, 0].numpy()
        if profile is None:
            pred.depth_bg = scene
            continue
        check_size(profile, pred.depth.shape)
        behind = profile.metric(scene)
        front = np.minimum(profile.metric(pred.depth), behind)
        pred.depth = np.where(pred.mask, front, behind).astype(np.float32)
        pred.depth_bg = behind
        pred.depth_unit = "metres"
        pred.objects = floor_objects(pred.mask_prob, pred.mask, profile)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool mask: (labels (H, W) int64, 0 = background, 1..n; n)."""
    h, w = mask.shape
    if not mask.any():
        return np.zeros((h, w), np.int64), 0
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
    ids = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w)
    lab = torch.where(m, ids, torch.zeros_like(ids))
    while True:  # every pixel takes the largest id among its neighbours until nothing changes
        grown = torch.where(m, F.max_pool2d(lab, 3, stride=1, padding=1), lab)
        if torch.equal(grown, lab):
            break
        lab = grown
    lab_np = lab[0, 0].numpy().astype(np.int64)
    uniq, inv = np.unique(lab_np, return_inverse=True)
    labels = inv.reshape(h, w)
    return labels, int(len(uniq) - 1)  # 0 is the first unique value: the background


def floor_objects(mask_prob: np.ndarray, mask: np.ndarray, profile: CameraProfile) -> list[dict[str, Any]]:
    """Per foreground region: box, floor contact (pixel, z-depth, distance along the ray) and height in metres."""
    h, w = mask.shape
    labels, n = label_regions(mask)
    normal = np.asarray(profile.floor_normal)
    cx, cy = profile.principal_point
    f = profile.focal_px
    out = []
    for k in range(1, n + 1):
        region = labels == k
        area = int(region.sum())
        if area < max(16, MIN_REGION_FRACTION * h * w):
            continue
        rows, cols = np.nonzero(region)
        top, bottom = int(rows.min()), int(rows.max())
        u = float(cols[rows >= bottom - 1].mean()) + 0.5  # centre of the region's lowest rows
        # soft extent: per row, the largest mask probability in the region grown by a pixel (edges count partly)
        grown = F.max_pool2d(torch.from_numpy(region)[None, None].float(), 3, stride=1, padding=1)[0, 0].numpy() > 0
        cover = np.where(grown, mask_prob, 0.0).max(axis=1)
        height_px = float(cover.sum())
        v = bottom + float(cover[bottom]) + (float(cover[bottom + 1]) if bottom + 1 < h else 0.0)  # contact line
        ray = np.array([(u - cx) / f, (v - cy) / f, 1.0])
        down = float(ray @ normal)
        z = -profile.camera_height_m / down if down < 0 else math.nan  # the ray meets the floor
        out.append({
            "id": len(out) + 1, "area_px": area,
            "box": [int(cols.min()), top, int(cols.max()) + 1, bottom + 1],
            "contact_px": [round(u, 2), round(v, 2)],
            "contact_visible": bottom < h - 1,
            "contact_depth_m": round(z, 4) if math.isfinite(z) else None,
            "contact_distance_m": round(z * float(np.linalg.norm(ray)), 4) if math.isfinite(z) else None,
            "height_m": round(height_px * z / f, 4) if math.isfinite(z) else None,
        })
    return out


def save_layers(pred: Prediction, folder: Path, depth: DepthInfo, camera: CameraProfile | None) -> None:
    """Write depth_bg.png (the encoding of depth.png) and, with a camera profile, objects.json; note both in
    depth.json (written before by save_prediction)."""
    if pred.depth_bg is None:
        return
    atomic_write_bytes(folder / "depth_bg.png", encode_depth_png(np.maximum(pred.depth_bg, depth.scale),
                                                                 depth.scale))
    info_path = folder / "depth.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info["layers"] = {"depth.png": "the picture's front surface: the foreground where the mask is, else the scene",
                      "depth_bg.png": "the empty scene behind the foreground (from the bg), same unit and scale"}
    if camera is not None:
        info["camera"] = {"fingerprint": camera.model_fingerprint, "depth_scale": camera.depth_scale,
                          "depth_shift": camera.depth_shift, "focal_px": camera.focal_px}
        atomic_write_text(folder / "objects.json", json.dumps(
            {"unit": "metres", "contact_depth": "z-depth of the floor contact", "contact_distance":
             "straight-line distance from the camera to the floor contact", "height":
             "pixel height x contact depth / focal_px", "objects": pred.objects or []},
            indent=2) + "\n")
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
