"""Calibration of a fixed camera (`maskdepth calibrate`): a camera profile from the empty scene and one measurement.

The model's depth of the empty scene (run on (bg, bg)) is back-projected with the pinhole intrinsics to 3-D points
in the model's depth unit. The floor is the plane found by RANSAC among planes whose normal is within
MAX_TILT_DEG of the image's "up" (-y) and that lie below the camera, refined by least squares on its inliers. The
metric scale then follows from either
- the camera's height above the floor (metres): scale = height / (the plane's distance from the camera); with
  the camera's measured tilt too, the floor plane is known in metres without the model, so every floor pixel
  has a known metric depth, and the depth is fitted to it as scale * model depth + shift (least squares on the
  relative error over the fitted floor's pixels): that does not depend on the tilt of the model's floor, and the
  shift takes out the model's offset (its near floor too far, its far floor too near, or the reverse), or
- one or more known distances: pixel (X, Y) is M metres from the camera, measured along the ray (a tape from the
  lens to the point, not the z-depth): scale = M / (model ray length at the pixel); several give their median,
  and their disagreement, with the field of view that would reconcile them, is reported.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from maskdepth.camera import CameraProfile, focal_from, model_fingerprint, ray_offsets, save_profile
from maskdepth.errors import UserError
from maskdepth.layers import empty_scene_depth
from maskdepth.predict import ImageInput, Predictor, load_model, to_rgb_array

# The floor's normal is at most this far from the image's up direction: cameras tilt down by up to about 35 deg;
# walls facing the camera are then at least 55 deg away.
MAX_TILT_DEG = 50.0
# A point is on the plane when its distance to it is within this fraction of its depth.
INLIER_TOL = 0.02
MIN_INLIER_TOL = 0.002
# Fewer floor inliers than this fraction of the image: the floor is not visible (or not flat).
MIN_FLOOR_FRACTION = 0.08
# Inlier residual RMS above this fraction of the camera height: the fit is too poor to give a scale.
MAX_RMS_FRACTION = 0.05
RANSAC_ITERS = 400
# Downward tilt a floor can be seen at: from a little upwards (wide lenses) to straight down.
TILT_RANGE_DEG = (-30.0, 90.0)
MAX_POINTS = 20_000
# Several distances whose scales spread by more than this (max / min - 1) are reported as inconsistent.
DISTANCE_SPREAD_WARN = 0.05
# The floor's model depths must span at least this ratio (farthest / nearest) to fit a shift beside the scale;
# a narrower floor gives the scale alone (the median ratio).
MIN_SHIFT_SPAN = 1.5


@dataclass(frozen=True)
class FloorFit:
    normal: np.ndarray  # (3,) unit, pointing up (towards the camera)
    distance: float  # the camera's distance to the plane, in the depth's unit
    inliers: np.ndarray  # (H, W) bool
    rms: float  # RMS point-to-plane residual of the inliers, in the depth's unit
    fraction: float  # inliers / pixels with depth


@dataclass(frozen=True)
class Distance:
    """A known distance: pixel column x, row y (full-resolution bg pixels) is `metres` away along the ray."""

    x: int
    y: int
    metres: float


def parse_distance(text: str) -> Distance:
    """'X,Y=M' -> Distance."""
    try:
        xy, m = text.split("=")
        x, y = xy.split(",")
        return Distance(int(x), int(y), float(m))
    except ValueError:
        raise UserError(f"--distance {text}: expected X,Y=M (pixel column, row and metres), e.g. 320,400=2.5") \
            from None


def back_project(depth: np.ndarray, focal: float) -> np.ndarray:
    """(H, W) z-depth -> (H, W, 3) camera coordinates."""
    a, b = ray_offsets(depth.shape, focal)
    d = depth.astype(np.float64)
    return np.stack([a * d, b * d, d], axis=-1)


def fit_floor(depth: np.ndarray, focal: float, seed: int = 0) -> FloorFit:
    """The floor plane of a depth map (any unit; 0 = unknown) seen by a pinhole camera of focal length `focal`."""
    points = back_project(depth, focal)
    valid = np.isfinite(depth) & (depth > 0)
    if valid.sum() < 3:
        raise UserError("the bg's depth is unknown everywhere; no floor to fit")
    pts = points[valid]
    rng = np.random.default_rng(seed)
    sample = pts[rng.choice(len(pts), size=min(len(pts), MAX_POINTS), replace=False)]
    z = sample[:, 2]
    up = np.array([0.0, -1.0, 0.0])
    cos_max = math.cos(math.radians(MAX_TILT_DEG))
    best, best_count = None, 0
    # RANSAC in chunks of hypotheses, each scored on every sampled point at once
    for _ in range(RANSAC_ITERS // 50):
        tri = sample[rng.integers(0, len(sample), size=(50, 3))]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norm = np.linalg.norm(n, axis=1)
        ok = norm > 1e-12
        n = n[ok] / norm[ok, None]
        n *= np.where(n @ up < 0, -1.0, 1.0)[:, None]  # point up
        c = -np.einsum("ij,ij->i", n, tri[ok, 0])  # plane n.X + c = 0; c = camera's signed distance
        keep = (n @ up >= cos_max) & (c > 0)  # roughly level, and below the camera (not the ceiling)
        if not keep.any():
            continue
        n, c = n[keep], c[keep]
        counts = (np.abs(sample @ n.T + c) < INLIER_TOL * z[:, None]).sum(axis=0)
        i = int(np.argmax(counts))
        if counts[i] > best_count:
            best, best_count = (n[i], c[i]), int(counts[i])
    if best is None or best_count < MIN_FLOOR_FRACTION * len(sample):
        raise UserError("no floor visible in the bg: calibration needs a flat floor in view (at least "
                        f"{MIN_FLOOR_FRACTION:.0%} of the picture); point the camera so the floor shows, and "
                        "take the bg again")
    n, c = best
    inliers = np.zeros(depth.shape, bool)
    tol = INLIER_TOL
    depth_safe = np.where(valid, depth, 1.0)
    for _ in range(4):  # least squares on the inliers, then the inliers of the refined plane, with a tighter band
        rel = np.abs(points @ n + c) / depth_safe
        inliers = valid & (rel < tol)
        on = points[inliers]
        if len(on) < 3:
            break
        centre = on.mean(axis=0)
        n = np.linalg.svd(on - centre, full_matrices=False)[2][-1]
        n = n if n @ up >= 0 else -n
        c = -float(n @ centre)
        # the band narrows to the fit's own spread, so the feet of the walls stop pulling the plane
        tol = float(np.clip(3 * np.median(np.abs(on @ n + c) / depth_safe[inliers]), MIN_INLIER_TOL, INLIER_TOL))
    inliers = valid & (np.abs(points @ n + c) / depth_safe < tol)
    fraction = float(inliers.sum() / valid.sum())
    if n @ up < cos_max or c <= 0 or fraction < MIN_FLOOR_FRACTION:
        raise UserError("no floor visible in the bg: the fitted plane is not a floor below the camera; calibration "
                        "needs a flat floor in view")
    rms = float(np.sqrt(np.mean((points[inliers] @ n + c) ** 2)))
    return FloorFit(normal=n, distance=float(c), inliers=inliers, rms=rms, fraction=fraction)


def floor_depth_fit(model: np.ndarray, metric: np.ndarray) -> tuple[float, float]:
    """(scale, shift) with metric ~ scale * model + shift over the floor's pixels (1-D arrays), least squares on
    the relative error; the scale alone (shift 0, the median ratio) where the floor spans too little depth to tell
    the two apart or the affine fit would not keep the nearest floor in front of the camera."""
    ratio_only = (float(np.median(metric / model)), 0.0)
    if model.max() < MIN_SHIFT_SPAN * model.min():
        return ratio_only
    w = 1.0 / metric
    (scale, shift), *_ = np.linalg.lstsq(np.stack([model * w, w], axis=1), np.ones_like(metric), rcond=None)
    if not (scale > 0 and scale * model.min() + shift > 0.5 * metric.min()):
        return ratio_only
    return float(scale), float(shift)


def distance_scales(depth: np.ndarray, focal: float, distances: list[Distance]) -> np.ndarray:
    """Scale (metres per depth unit) each known distance gives: metres / the model's ray length at its pixel."""
    h, w = depth.shape
    out = []
    for d in distances:
        a = (d.x + 0.5 - w / 2) / focal
        b = (d.y + 0.5 - h / 2) / focal
        out.append(d.metres / (float(depth[d.y, d.x]) * math.sqrt(1 + a * a + b * b)))
    return np.asarray(out)


def best_fov(depth: np.ndarray, distances: list[Distance]) -> float:
    """The vertical field of view (degrees) under which the known distances agree best on one scale."""
    fovs = np.arange(10.0, 170.01, 0.5)
    h = depth.shape[0]
    spread = [np.std(np.log(distance_scales(depth, (h / 2) / math.tan(math.radians(f) / 2), distances)))
              for f in fovs]
    return float(fovs[int(np.argmin(spread))])


def check_inputs(size: tuple[int, int], camera_height: float | None, distances: list[Distance],
                 tilt: float | None = None) -> None:
    if (camera_height is None) == (not distances):
        raise UserError("give the camera's height (--camera-height M) or known distances (--distance X,Y=M), "
                        "one of the two")
    if tilt is not None:
        if camera_height is None:
            raise UserError("--tilt goes with --camera-height (the two fix the floor plane); drop it or give the "
                            "height")
        if not (math.isfinite(tilt) and TILT_RANGE_DEG[0] <= tilt <= TILT_RANGE_DEG[1]):
            raise UserError(f"--tilt {tilt}: the camera's downward tilt must be between {TILT_RANGE_DEG[0]:g} and "
                            f"{TILT_RANGE_DEG[1]:g} degrees (0 = level, 90 = straight down)")
    if camera_height is not None and not (math.isfinite(camera_height) and camera_height > 0):
        raise UserError(f"--camera-height {camera_height}: must be a positive height in metres")
    h, w = size
    for d in distances:
        if not (0 <= d.x < w and 0 <= d.y < h):
            raise UserError(f"--distance {d.x},{d.y}={d.metres:g}: pixel outside the {w}x{h} bg; give a column "
                            f"0-{w - 1} and a row 0-{h - 1}")
        if not (math.isfinite(d.metres) and d.metres > 0):
            raise UserError(f"--distance {d.x},{d.y}={d.metres:g}: must be a positive distance in metres")


def profile_from_depth(depth: np.ndarray, focal: float, camera_height: float | None = None,
                       distances: list[Distance] | None = None, model: str = "", fingerprint: str = "",
                       source: dict | None = None, tilt: float | None = None) -> CameraProfile:
    """The profile of a camera whose empty-scene depth (model unit) is `depth`: floor fit plus scale solve.
    `tilt`: the camera's measured downward tilt in degrees (no roll), with `camera_height`."""
    distances = list(distances or [])
    size = (int(depth.shape[0]), int(depth.shape[1]))
    check_inputs(size, camera_height, distances, tilt)
    floor = fit_floor(depth, focal)
    residuals = {"floor_inlier_fraction": round(floor.fraction, 4),
                 "floor_rms_relative": round(floor.rms / floor.distance, 5)}
    if floor.rms > MAX_RMS_FRACTION * floor.distance:
        raise UserError(f"the floor fit is poor (residual {floor.rms / floor.distance:.1%} of the camera height); "
                        "calibration needs a flat floor in view; take the bg with more floor showing")
    normal, height, shift = floor.normal, None, 0.0
    if tilt is not None:
        # the measured floor: level, tilted by `tilt` in camera coordinates; its depth along each floor ray
        t = math.radians(tilt)
        normal = np.array([0.0, -math.cos(t), -math.sin(t)])
        a, b = ray_offsets(depth.shape, focal)
        down = normal[0] * a + normal[1] * b + normal[2]
        on = floor.inliers & (down < 0)
        if on.sum() < 3:
            raise UserError(f"--tilt {tilt}: with this tilt the floor found in the bg is not below the horizon; "
                            "check the tilt (degrees down from level)")
        model, metric = depth[on].astype(np.float64), camera_height / -down[on]
        scale, shift = floor_depth_fit(model, metric)
        height = camera_height
        residuals["floor_depth_error_relative"] = round(float(np.median(np.abs((scale * model + shift) / metric
                                                                              - 1))), 5)
        residuals["floor_tilt_error_deg"] = round(math.degrees(math.acos(min(1.0, float(normal @ floor.normal)))),
                                                  3)
    elif camera_height is not None:
        scale = camera_height / floor.distance
    else:
        scales = distance_scales(depth, focal, distances)
        scale = float(np.median(scales))
        # the floor gives the camera height these distances imply: a check a user can measure
        residuals["distance_scales"] = [round(float(s), 6) for s in scales]
        if len(distances) >= 2:
            residuals["distance_spread"] = round(float(scales.max() / scales.min() - 1), 5)
            residuals["best_fit_vfov_deg"] = best_fov(depth, distances)
    if not (math.isfinite(scale) and scale > 0):
        raise UserError("the measurement gives no valid scale; check --camera-height / --distance")
    return CameraProfile(size=size, focal_px=float(focal), depth_scale=float(scale), depth_shift=shift,
                         floor_normal=tuple(float(x) for x in normal),
                         camera_height_m=float(height if height is not None else floor.distance * scale),
                         model=model, model_fingerprint=fingerprint, residuals=residuals, source=dict(source or {}))


def distance_warning(profile: CameraProfile) -> str | None:
    """One line when several known distances disagree on the scale, else None."""
    spread = profile.residuals.get("distance_spread")
    if spread is None or spread <= DISTANCE_SPREAD_WARN:
        return None
    best = profile.residuals["best_fit_vfov_deg"]
    fov = ("no field of view in 10-170 deg reconciles them" if best in (10.0, 170.0) else
           f"they agree best at a {best:g} deg vertical field of view, the profile has {profile.vfov_deg:.1f} deg")
    return (f"the known distances disagree on the scale by {spread:.0%} (the median is used); {fov}: check --fov / "
            "--focal-px and the distances (and that the model's depth is right there)")


def calibrate(bg: ImageInput, camera_height: float | None = None, distances: list[Distance | str] | None = None,
              fov: float | None = None, focal_px: float | None = None, ckpt: str | os.PathLike | None = None,
              predictor: Predictor | None = None, out: str | os.PathLike | None = None,
              force: bool = False, tilt: float | None = None) -> CameraProfile:
    """Calibrate a fixed camera from its empty scene `bg` and its height (metres; with its downward `tilt` in
    degrees if measured) or known distances (Distance or 'X,Y=M' strings). Uses `predictor`, else the checkpoint `ckpt` (None: the default weights).
    Writes the profile to `out` (atomically; an existing file only with `force`) and returns it."""
    dists = [parse_distance(d) if isinstance(d, str) else d for d in (distances or [])]
    image = to_rgb_array(bg, "bg")
    size = (int(image.shape[0]), int(image.shape[1]))
    check_inputs(size, camera_height, dists, tilt)
    focal = focal_from(size, fov, focal_px)
    if out is not None and os.path.exists(out) and not force:
        raise UserError(f"{out}: already exists; pass --force to replace it, or choose another --out")
    if predictor is None:
        predictor = load_model(ckpt)
    if predictor.camera is not None:
        raise UserError("calibrate needs the model's own depth; use a predictor without a camera profile")
    depth = empty_scene_depth(predictor, [image])[0]
    source = {"bg": str(bg) if isinstance(bg, (str, os.PathLike)) else "array",
              "camera_height_m": camera_height, "tilt_deg": tilt, "distances": [[d.x, d.y, d.metres] for d in dists],
              "fov_deg": fov, "focal_px_given": focal_px, "distance_kind": "along the ray"}
    profile = profile_from_depth(depth, focal, camera_height, dists, predictor.model_name,
                                 model_fingerprint(predictor.model), source, tilt)
    if out is not None:
        save_profile(profile, out, force=force)
    return profile
