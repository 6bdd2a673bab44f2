"""The files of `maskdepth predict`: the (bg, image) pairs it reads, the output folders it plans, and the pictures of
a prediction it writes (which `maskdepth serve` sends too). The model side is predict.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from maskdepth.codecs import encode_depth_png, encode_png
from maskdepth.errors import UserError
from maskdepth.fileio import atomic_write_bytes, atomic_write_text, remove_stale_temps, write_error
from maskdepth.layers import LAYER_FILES, save_layers
from maskdepth.predict import DepthInfo, Prediction, Predictor, to_rgb_array
from maskdepth.progress import Progress
from maskdepth.viz import colorize_depth, overlay

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PREDICTION_FILES = ("mask.png", "mask_prob.png", "depth.png", "depth.json", "depth_color.png", "overlay.png")
OUTPUT_FILES = PREDICTION_FILES + LAYER_FILES
# what every run writes for a pair (objects.json comes only with a camera profile): a folder with all of them is done
COMPLETE_FILES = PREDICTION_FILES + ("depth_bg.png",)
OVERLAY_COLOR = (255, 64, 32)


def find_pairs(bg: str | os.PathLike, image: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(bg, image) file pairs: a file and a file; one bg file for every image in a folder (fixed camera); or two
    folders matched by file name without suffix."""
    bg, image = Path(bg), Path(image)
    for p, what in ((bg, "bg"), (image, "image")):
        if not p.exists():
            raise UserError(f"{p}: {what} not found; check the path")
        if not p.is_file() and not p.is_dir():  # /dev/null, a FIFO, a socket: nothing to read a picture from
            raise UserError(f"{p}: {what} is not a regular file or a folder; give a picture file or a folder")
    if image.is_file():
        if bg.is_dir():
            raise UserError(f"{bg}: is a folder but --image is one file; give the bg file, or an image folder")
        return [(bg, image)]
    images = _image_files(image)
    if bg.is_file():
        return [(bg, p) for p in images]
    bgs = {p.stem: p for p in _image_files(bg)}
    missing = [p for p in images if p.stem not in bgs]
    if missing:
        raise UserError(f"{missing[0]}: no background named {missing[0].stem}.* in {bg} ({len(missing)} of "
                        f"{len(images)} images unmatched); name each bg like its image, or give one bg file")
    return [(bgs[p.stem], p) for p in images]


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder; check the path")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise UserError(f"{folder}: several images named {dup}.*; keep one per name so outputs do not collide")
    return files


def encode_prediction(pred: Prediction, image: np.ndarray, depth: DepthInfo) -> dict[str, bytes]:
    """One prediction's pictures as `maskdepth predict` writes them and `maskdepth serve` sends them: mask.png (the
    binary mask: 255 where mask_prob >= threshold, else 0), mask_prob.png (8-bit probability), depth.png (16-bit,
    depth = value * depth.scale), depth_color.png (this picture's own depth range) and overlay.png (the binary
    mask on the image)."""
    mask = pred.mask.astype(np.uint8) * 255
    return {
        "mask.png": encode_png(mask),
        "mask_prob.png": encode_png((pred.mask_prob * 255.0 + 0.5).astype(np.uint8)),
        # at least one step: PNG value 0 means 'unknown depth', and every predicted depth is known
        "depth.png": encode_depth_png(np.maximum(pred.depth, depth.scale), depth.scale),
        # colours span this picture's own depth range, so near and far read well in any unit
        "depth_color.png": encode_png(colorize_depth(pred.depth)),
        "overlay.png": encode_png(overlay(image, mask, OVERLAY_COLOR)),
    }


def save_prediction(pred: Prediction, image: np.ndarray, folder: Path, depth: DepthInfo,
                    force: bool = False) -> None:
    """Write encode_prediction's pictures and depth.json (unit, scale) into `folder`, each atomically; overlay.png
    is written last, so a folder that has it is complete."""
    if not force:
        _refuse_existing([folder])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) from None
    pictures = encode_prediction(pred, image, depth)
    last = pictures.pop("overlay.png")
    for name, data in pictures.items():
        atomic_write_bytes(folder / name, data)
    atomic_write_text(folder / "depth.json", json.dumps(
        {"file": "depth.png", "unit": depth.unit, "scale": depth.scale, "max": depth.max,
         "meaning": "depth = PNG value * scale, in unit"}, indent=2) + "\n")
    atomic_write_bytes(folder / "overlay.png", last)


def _refuse_existing(folders: list[Path]) -> None:
    for folder in folders:
        for name in OUTPUT_FILES:
            if (folder / name).exists():
                raise UserError(f"{folder / name}: already exists; pass --force to overwrite, or choose another --out")


def plan_outputs(bg: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike,
                 force: bool = False, resume: bool = False) -> list[tuple[Path, Path, Path]]:
    """(bg file, image file, output folder) for each pair: `out` itself for one image file, `out/<image name>/`
    for an image folder. Refuses, before any work, to write over existing outputs unless `force`; with `resume`
    pairs whose outputs are complete are left out (and the others' outputs are written anew)."""
    pairs = find_pairs(bg, image)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder; choose another --out")
    _check_writable(out)
    folders = [out] if Path(image).is_file() else [out / p.stem for _, p in pairs]
    inputs = {p.resolve() for pair in pairs for p in pair}
    for f in folders:
        hit = next((f / n for n in OUTPUT_FILES if (f / n).resolve() in inputs), None)
        if hit is not None:
            raise UserError(f"{hit}: is an input of this command and would be overwritten; choose another --out")
    plan = [(b, i, f) for (b, i), f in zip(pairs, folders)]
    if resume:
        for f in folders:
            remove_stale_temps(f)  # what a killed earlier run left
        return [(b, i, f) for b, i, f in plan if not all((f / n).is_file() for n in COMPLETE_FILES)]
    if not force:
        _refuse_existing(folders)
    return plan


def _check_writable(out: Path) -> None:
    """The nearest existing folder at or above `out` must be a folder we may write in (one line, not OSError)."""
    p = out.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{out}: {p} is a file, not a folder; choose another --out")
    if not os.access(p, os.W_OK):
        raise UserError(f"{out}: cannot write in {p} (read-only or not yours); choose another --out")


def predict_files(predictor: Predictor, plan: list[tuple[Path, Path, Path]], resize_bg: bool = False,
                  progress: bool = True, skip_bad: bool = False) -> list[tuple[Path, str]]:
    """`maskdepth predict`: run and write every (bg, image, folder) of `plan_outputs`, batch by batch. With
    `skip_bad` a pair that cannot be read or predicted is reported on stderr and passed over; returns those
    (image, why)."""
    skipped: list[tuple[Path, str]] = []

    def read(path: Path) -> np.ndarray | None:
        try:
            return to_rgb_array(path)
        except UserError as e:
            if not skip_bad:
                raise
            skipped.append((path, str(e)))
            print(f"maskdepth: skipped {path}: {e}", file=sys.stderr)
            return None

    # the fixed-camera bg is read once and, being one array, converted once per batch
    shared = len({b for b, _, _ in plan}) == 1
    shared_bg = to_rgb_array(plan[0][0]) if shared and plan else None
    n = predictor.batch_size
    with Progress(len(plan), "predict", unit="pair", enabled=progress and len(plan) > 1) as bar:
        for i in range(0, len(plan), n):
            chunk = []
            for b, p, f in plan[i:i + n]:
                bg = shared_bg if shared else read(b)
                img = read(p) if bg is not None else None
                if img is not None:
                    chunk.append((bg, img, p, f))
            for pred, (_, img, _, folder) in zip(_predict_chunk(predictor, chunk, resize_bg, skip_bad, skipped),
                                                 chunk):
                if pred is not None:
                    save_prediction(pred, img, folder, predictor.depth, force=True)  # plan_outputs checked
                    save_layers(pred, folder, predictor.depth, predictor.camera)
            bar.update(len(plan[i:i + n]))
    return skipped


def _predict_chunk(predictor: Predictor, chunk: list, resize_bg: bool, skip_bad: bool,
                   skipped: list[tuple[Path, str]]) -> list[Prediction | None]:
    """Predictions of a chunk of (bg, image, image path, folder); with `skip_bad` a failing batch is run pair by
    pair and the pairs that fail are None."""
    def run(part: list) -> list[Prediction]:
        return predictor.predict_arrays([c[0] for c in part], [c[1] for c in part], resize_bg,
                                        names=[str(c[2]) for c in part])

    if not skip_bad:
        return list(run(chunk))
    try:
        return list(run(chunk))
    except UserError:
        preds: list[Prediction | None] = []
        for c in chunk:
            try:
                preds.extend(run([c]))
            except UserError as e:
                skipped.append((c[2], str(e)))
                print(f"maskdepth: skipped {c[2]}: {e}", file=sys.stderr)
                preds.append(None)
        return preds
