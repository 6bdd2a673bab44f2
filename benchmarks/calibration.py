"""Metric depth with a camera profile, on unseen procedural rooms, with the shipped default weights.

Each room (seed 777, never trained on: the default weights saw seed 1) is calibrated from its clean bg with its
true camera height, with its true height and tilt, and with one true distance (a floor pixel below the image centre, its true
distance along the ray), both with the room's true field of view. On composites of procedural cutouts standing
on its floor (data/compose.py, the training composition) it reports, beside the uncalibrated model:
- delta1 and AbsRel of depth over all pixels of the composites;
- the median foreground height error: the region of objects.json that overlaps the true object most, against the
  drawn height (height_px * contact depth / focal_px, the composition rule);
- where the error comes from: the same figures with the best single scale per room (what any scale calibration
  could reach with these depths), with the best scale and shift, and with a profile fitted on the true depth
  (exact floor, the model's mask), the floor plane's tilt error and the calibrated scale against the best one.
And a sequence check: one camera, 50 frames each with a different cutout, the relative spread (std / mean) of
the depth of static pixels (no foreground in any frame) across the frames, with the profile and without.

    nice .venv/bin/python benchmarks/calibration.py [--ckpt W] [--rooms 12] [--frames 8]
        [--out benchmarks/results/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import maskdepth
from maskdepth.calibration import Distance, fit_floor, profile_from_depth
from maskdepth.camera import model_fingerprint
from maskdepth.data.banks import (
    STREAM_BACKGROUND,
    BackgroundBank,
    CutoutBank,
    procedural_background,
    procedural_foreground,
    seed_for,
)
from maskdepth.data.compose import ComposeConfig, composite, sample_placements
from maskdepth.data.rooms import sample_room
from maskdepth.errors import UserError
from maskdepth.fileio import atomic_write_text
from maskdepth.layers import empty_scene_depth, floor_objects

SEED = 777
SIZE = (120, 160)


def depth_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    ratio = np.maximum(pred / true, true / pred)
    return {"delta1": float(np.mean(ratio < 1.25)), "absrel": float(np.mean(np.abs(pred - true) / true))}


def scene(index: int, n_frames: int, fg_offset: int) -> tuple:
    """(room params, bg, composites dict (numpy), placements) of room `index` with n_frames cutouts."""
    params = sample_room(np.random.default_rng(seed_for(SEED, STREAM_BACKGROUND, index)))
    bg = procedural_background(SEED, index, SIZE)
    cutouts = [procedural_foreground(SEED, fg_offset + k) for k in range(n_frames)]
    bank, cbank = BackgroundBank.from_backgrounds([bg]), CutoutBank.from_cutouts(cutouts)
    gen = torch.Generator().manual_seed(seed_for(SEED, 99, index))
    cfg = ComposeConfig(shadow_prob=0.0)
    p = sample_placements(bank, cbank, torch.zeros(n_frames, dtype=torch.int64), torch.arange(n_frames),
                          torch.zeros(n_frames, dtype=torch.bool), gen, cfg)
    batch = composite(bank, cbank, p, cfg)
    comp = {"image": (batch["image"].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8),
            "mask": batch["mask"][:, 0].numpy(), "depth": batch["depth"][:, 0].numpy()}
    true_h = (p.height_px * p.contact_depth / bank.focal_px[0]).numpy()
    return params, bg, comp, true_h


def true_distance(bg, focal: float) -> Distance:
    """A floor pixel straight below the image centre, about 3/4 of the way down, and its true ray distance."""
    h, w = bg.depth.shape
    x = w // 2
    rows = [r for r in range(int(0.75 * h), h) if bg.floor[r, x]] or [int(np.nonzero(bg.floor[:, x])[0].max())]
    y = rows[0]
    a, b = (x + 0.5 - w / 2) / focal, (y + 0.5 - h / 2) / focal
    return Distance(x, y, float(bg.depth[y, x]) * math.sqrt(1 + a * a + b * b))


def height_errors(mask_prob: np.ndarray, mask: np.ndarray, true_mask: np.ndarray, true_h: float, profile) -> float:
    """Relative height error of the region overlapping the true object most (nan when none does)."""
    objects = floor_objects(mask_prob, mask, profile)
    best, overlap = None, 0
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        ov = int((true_mask[y0:y1, x0:x1] >= 0.5).sum())
        if ov > overlap:
            best, overlap = o, ov
    if best is None or best["height_m"] is None:
        return math.nan
    return abs(best["height_m"] - true_h) / true_h


def run_rooms(predictor, n_rooms: int, n_frames: int) -> dict:
    fp = model_fingerprint(predictor.model)
    rows = []
    for i in range(n_rooms):
        params, bg, comp, true_h = scene(i, n_frames, fg_offset=i * n_frames)
        focal = bg.focal_px
        preds = predictor.predict_arrays([bg.image] * n_frames, list(comp["image"]))
        raw_bg = empty_scene_depth(predictor, [bg.image])[0].astype(np.float64)
        raw = np.stack([p.depth for p in preds]).astype(np.float64)  # uncalibrated: the model's own depth
        true = comp["depth"].astype(np.float64)
        # the static scene from the bg layer, the frame's depth inside the mask (what predict --camera gives)
        masks = np.stack([p.mask for p in preds])
        layered = np.where(masks, np.minimum(raw, raw_bg[None]), raw_bg[None])
        best_scale = float(np.median(bg.depth / raw_bg))
        X = np.stack([raw_bg.ravel(), np.ones(raw_bg.size)], 1)
        (sa, sb), *_ = np.linalg.lstsq(X, bg.depth.ravel().astype(np.float64), rcond=None)
        row = {"room": i, "camera_height_m": params.cam_height, "vfov_deg": round(math.degrees(params.vfov), 2),
               "pitch_deg": round(math.degrees(params.pitch), 2), "uncalibrated": depth_metrics(raw, true),
               "best_scale": {**depth_metrics(layered * best_scale, true), "scale": best_scale},
               "best_scale_shift": depth_metrics(np.maximum(layered * sa + sb, 1e-3), true)}
        true_floor, model_floor = fit_floor(bg.depth, focal), fit_floor(raw_bg, focal)
        row["floor_tilt_error_deg"] = math.degrees(math.acos(min(1.0, float(model_floor.normal @ true_floor.normal))))
        dist = true_distance(bg, focal)
        for name, kw in (("height", {"camera_height": params.cam_height}),
                         ("height_tilt", {"camera_height": params.cam_height, "tilt": math.degrees(params.pitch)}),
                         ("distance", {"distances": [dist]})):
            try:
                prof = profile_from_depth(raw_bg.astype(np.float32), focal, model=predictor.model_name,
                                          fingerprint=fp, **kw)
            except UserError as e:
                row[name] = {"error": str(e)}
                continue
            herr = [height_errors(p.mask_prob, p.mask, comp["mask"][k], float(true_h[k]), prof)
                    for k, p in enumerate(preds)]
            row[name] = {**depth_metrics(prof.metric(layered), true), "height_errors": herr,
                         "scale": prof.depth_scale, "shift": prof.depth_shift,
                         "scale_vs_best": prof.depth_scale / best_scale - 1,
                         "residuals": prof.residuals}
        # an exact floor (profile from the true depth) with the model's masks: the error of the masks alone
        exact = profile_from_depth(bg.depth, focal, camera_height=params.cam_height)
        row["exact_floor_height_errors"] = [height_errors(p.mask_prob, p.mask, comp["mask"][k], float(true_h[k]),
                                                          exact) for k, p in enumerate(preds)]
        rows.append(row)
        print(f"room {i}: uncal absrel {row['uncalibrated']['absrel']:.3f}; height-cal "
              f"{row['height'].get('absrel', float('nan')):.3f}; best-scale {row['best_scale']['absrel']:.3f}",
              flush=True)
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    def mean(key, sub=None):
        vals = [r[key][sub] if sub else r[key] for r in rows if sub is None or sub in r[key]]
        return float(np.mean(vals)) if vals else None

    def med_err(key):
        vals = [e for r in rows for e in (r[key] if key.endswith("errors") else r[key].get("height_errors", []))
                if not math.isnan(e)]
        return {"median": float(np.median(vals)) if vals else None, "matched": len(vals),
                "of": sum(len(r["exact_floor_height_errors"]) for r in rows)}

    out = {}
    names = ("height", "height_tilt", "distance")
    for name in ("uncalibrated", "best_scale", "best_scale_shift", *names):
        out[name] = {"delta1": mean(name, "delta1"), "absrel": mean(name, "absrel")}
    for name in names:
        out[name]["height_error"] = med_err(name)
        out[name]["median_abs_scale_vs_best"] = float(np.median([abs(r[name]["scale_vs_best"]) for r in rows
                                                                 if "scale" in r[name]]))
        out[name]["failed"] = sum("error" in r[name] for r in rows)
    out["exact_floor"] = {"height_error": med_err("exact_floor_height_errors")}
    out["model_floor_tilt_error_deg"] = {"median": float(np.median([r["floor_tilt_error_deg"] for r in rows])),
                                         "max": float(np.max([r["floor_tilt_error_deg"] for r in rows]))}
    return {"summary": out, "rooms": rows}


def run_sequence(predictor, n_frames: int) -> dict:
    """One camera (room 0), n_frames frames with a different cutout each: spread of static-pixel depth."""
    params, bg, comp, _ = scene(0, n_frames, fg_offset=1000)
    raw_bg = empty_scene_depth(predictor, [bg.image])[0]
    prof = profile_from_depth(raw_bg, bg.focal_px, camera_height=params.cam_height)
    predictor.camera = prof  # the profile as predict --camera uses it (same model, fingerprint not needed here)
    with_profile = np.stack([p.depth for p in predictor.predict_arrays([bg.image] * n_frames, list(comp["image"]))])
    predictor.camera = None
    raw = np.stack([p.depth for p in predictor.predict_arrays([bg.image] * n_frames, list(comp["image"]))])
    static = (comp["mask"] == 0).all(axis=0)

    def spread(d):
        rel = d[:, static].std(axis=0) / d[:, static].mean(axis=0)
        # the max is set by a handful of pixels beside the foreground that the mask takes in some frames
        return {"median": float(np.median(rel)), "p95": float(np.percentile(rel, 95)),
                "p99": float(np.percentile(rel, 99)), "max": float(rel.max()),
                "above_1pct": float(np.mean(rel > 0.01))}

    return {"frames": n_frames, "static_fraction": float(static.mean()), "with_profile": spread(with_profile),
            "without_profile": spread(raw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped weights)")
    ap.add_argument("--rooms", type=int, default=12)
    ap.add_argument("--frames", type=int, default=8, help="composites per room")
    ap.add_argument("--sequence", type=int, default=50, help="frames of the sequence check")
    ap.add_argument("--out", default="benchmarks/results/calibration.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    predictor = maskdepth.load_model(args.ckpt, device="cpu")
    report = {"what": "camera profile on unseen procedural rooms (seed 777), "
                      + (args.ckpt or "shipped default weights"),
              "size": list(SIZE), "rooms_n": args.rooms, "frames_per_room": args.frames,
              "machine": f"{platform.machine()}, torch {torch.__version__}",
              **run_rooms(predictor, args.rooms, args.frames), "sequence": run_sequence(predictor, args.sequence)}
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(json.dumps({"summary": report["summary"], "sequence": report["sequence"]}, indent=2))


if __name__ == "__main__":
    main()
