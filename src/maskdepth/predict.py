"""Using a trained model: `load_model(path).predict(bg, image)` and the seed-style `predict_images`.

Where the model runs: weights trained across working sizes whose mask and depth hold across them say so in their
header (`predict_native`, written by `train.predict_native`) and run at the input's own size (up to
NATIVE_MAX_PIXELS; a smaller input is enlarged to NATIVE_MIN_SIDE² pixels or train_size, whichever is less) by
default. Other checkpoints were trained on frames of `train_size` pixels, so a pair is
resampled (aspect ratio kept) to a working size of about that many pixels. `size=` sets the working size and
`native=` chooses either way. The outputs are resampled back to the input's size: the mask probability and the
depth bilinearly, the binary mask thresholded afterwards.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskdepth import align
from maskdepth.camera import CameraProfile
from maskdepth.checkpoint import DEFAULT_CARD, default_weights, load_model_from_checkpoint, packaged_file
from maskdepth.codecs import read_rgb, to_rgb_uint8
from maskdepth.device import resolve_device
from maskdepth.errors import UserError
from maskdepth.layers import add_layers, attach_camera

# Working size for a checkpoint whose header does not say what size it was trained at.
DEFAULT_TRAIN_SIZE = (192, 192)
# Working sides are rounded to a multiple of this; the model pads to its own stride, and rounding to that (often
# 32) would distort the aspect ratio at training sizes like 192.
SIDE_MULTIPLE = 8
# `native` runs at the input's own size up to this many pixels (about 1 megapixel); larger inputs are resampled
# to it, aspect kept, so that a 4K frame neither exhausts memory nor takes seconds on a CPU.
NATIVE_MAX_PIXELS = 1024 * 1024
# ... and no smaller than this squared (or train_size, where that is smaller): below the sizes such weights are
# trained at (96-192 for the shipped ones) their depth breaks down, so a thumbnail is enlarged to it
NATIVE_MIN_SIDE = 96

ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """One pair's result at the input's size."""

    mask_prob: np.ndarray  # (H,W) float32 in [0,1]: probability that a pixel is foreground
    mask: np.ndarray  # (H,W) bool: mask_prob >= threshold
    depth: np.ndarray  # (H,W) float32 depth of `image`, in `depth_unit`
    depth_unit: str  # "m" for models trained on procedural data, "relative" for teacher or seed depth
    work_size: tuple[int, int]  # (H, W) the model ran at
    depth_bg: np.ndarray | None = None  # (H,W) float32 depth of the empty scene behind the foreground (layers.py)
    objects: list[dict[str, Any]] | None = None  # with a camera profile: the foreground's regions in metres
    registration: dict[str, Any] | None = None  # how the bg was moved and recoloured onto the image (align.py)


@dataclass(frozen=True)
class DepthInfo:
    """What the checkpoint says about its depth output."""

    unit: str
    max: float
    scale: float  # 16-bit PNG step: depth = png value * scale


def depth_info(header: dict[str, Any], depth_max: float) -> DepthInfo:
    """Depth unit and PNG scale from a checkpoint header (`depth: {unit, scale, max}` as in dataset metadata, or
    flat `depth_unit` / `depth_scale` / `depth_max`). The scale falls back to depth_max / 65535 so the full range
    fits a 16-bit PNG."""
    d = header.get("depth") if isinstance(header.get("depth"), dict) else {}
    unit = str(d.get("unit", header.get("depth_unit", "relative")))
    dmax = float(d.get("max", header.get("depth_max", depth_max)))
    scale = float(d.get("scale", header.get("depth_scale", 0.0)) or 0.0)
    if not scale > 0 or dmax / scale > 65535:
        scale = dmax / 65535
    return DepthInfo(unit=unit, max=dmax, scale=scale)


def working_size(h: int, w: int, target: tuple[int, int] | int, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """(H, W) with the aspect ratio of h x w and about target[0] * target[1] pixels, sides rounded to `multiple`."""
    th, tw = (target, target) if isinstance(target, int) else target
    s = math.sqrt(th * tw / (h * w))
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


def to_rgb_array(x: ImageInput, what: str = "image") -> np.ndarray:
    """A file path, PIL image or array (gray, RGB, RGBA; uint8, uint16 or float in [0,1]) -> (H,W,3) uint8."""
    if isinstance(x, (str, os.PathLike)):
        return read_rgb(x)
    if isinstance(x, Image.Image):
        return to_rgb_uint8(x)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise UserError(f"{what}: got {type(x).__name__}; pass a file path, a PIL image or an (H,W[,C]) array")
    a = x
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[..., :3] if a.shape[2] >= 3 else a[..., 0]  # alpha dropped, as for files
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise UserError(f"{what}: array of shape {x.shape}; expected (H,W) gray, (H,W,3) RGB or (H,W,4) RGBA")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype.kind == "f":
        return (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    raise UserError(f"{what}: array of dtype {a.dtype}; use uint8, uint16 or float in [0, 1]")


class Predictor:
    """A model ready for inference, with what its checkpoint says about depth and training size."""

    def __init__(self, model: torch.nn.Module, header: dict[str, Any] | None = None,
                 device: str | torch.device | None = None, size: int | tuple[int, int] | None = None,
                 native: bool | None = None, threshold: float = 0.5, batch_size: int = 8, bf16: bool | None = None,
                 camera: str | os.PathLike | CameraProfile | None = None, align_bg: bool = True):
        header = header or {}
        if not (isinstance(threshold, int | float) and 0 < threshold < 1):  # nan fails too
            raise UserError(f"threshold {threshold}: give the mask probability threshold as a number strictly "
                            "between 0 and 1 (--threshold, threshold=)")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.header = header
        self.card: dict[str, Any] | None = None  # the model card, for the shipped default weights
        self.model_name: str = header.get("model", getattr(model, "model_name", type(model).__name__))
        self.depth = depth_info(header, float(getattr(model, "depth_max", header.get("depth_max", 1.0))))
        ts = header.get("train_size")
        self.train_size: tuple[int, int] = (int(ts[0]), int(ts[1])) if ts else DEFAULT_TRAIN_SIZE
        if native is None:  # a size given wins; else what the weights say they hold across
            native = size is None and bool(header.get("predict_native", False))
        self.size, self.native, self.threshold, self.batch_size = size, native, threshold, max(1, batch_size)
        self.bf16 = self.device.type == "cuda" if bf16 is None else bf16
        self.align_bg = align_bg  # register the bg onto each image first: a nudged camera, changed light
        # a camera profile (camera.json): depth in metres with its one scale, the static scene from the bg
        self.camera: CameraProfile | None = attach_camera(self, camera)
        self.scene_depth_cache: dict[str, np.ndarray] = {}  # the model's depth of recent empty scenes (layers.py)

    @property
    def depth_unit(self) -> str:
        return self.depth.unit

    def work_size(self, h: int, w: int) -> tuple[int, int]:
        if self.native:
            least = min(NATIVE_MIN_SIDE ** 2, self.train_size[0] * self.train_size[1])
            if h * w < least:
                return working_size(h, w, math.isqrt(least))
            return (h, w) if h * w <= NATIVE_MAX_PIXELS else working_size(h, w, math.isqrt(NATIVE_MAX_PIXELS))
        return working_size(h, w, self.size or self.train_size)

    def predict(self, bg: ImageInput | list[ImageInput], image: ImageInput | list[ImageInput],
                resize_bg: bool = False) -> Prediction | list[Prediction]:
        """Mask and depth of `image` given the empty scene `bg`.

        One pair gives a Prediction; lists give a list (a single bg with a list of images serves them all, the
        fixed-camera case). bg must have the image's size unless `resize_bg`, which resamples it.
        """
        if not isinstance(image, (list, tuple)):
            if isinstance(bg, (list, tuple)):
                raise UserError("bg is a list but image is not; pass lists of the same length, or one bg")
            return self.predict_arrays([to_rgb_array(bg, "bg")], [to_rgb_array(image)], resize_bg)[0]
        if isinstance(bg, (list, tuple)):
            if len(bg) != len(image):
                raise UserError(f"{len(bg)} backgrounds for {len(image)} images; pass as many as images, or one")
            bgs = [to_rgb_array(b, "bg") for b in bg]
        else:
            bgs = [to_rgb_array(bg, "bg")] * len(image)
        return self.predict_arrays(bgs, [to_rgb_array(x) for x in image], resize_bg)

    def predict_arrays(self, bgs: list[np.ndarray], images: list[np.ndarray], resize_bg: bool = False,
                       names: list[str] | None = None, layers: bool = True) -> list[Prediction]:
        """Pairs of (H,W,3) uint8 arrays -> predictions, run in batches of equal-sized consecutive pairs.
        `names` (the image files) only make error messages precise. `layers=False` skips the empty-scene layer
        (one more model run per distinct bg), for callers that use only the mask and the depth."""
        out: list[Prediction] = []
        i = 0
        while i < len(images):
            hw = images[i].shape[:2]
            j = i + 1
            while j < len(images) and j - i < self.batch_size and images[j].shape[:2] == hw:
                j += 1
            for k in range(i, j):
                if bgs[k].shape[:2] != hw and not resize_bg:
                    name = names[k] if names else "image"
                    raise UserError(f"{name}: image is {hw[1]}x{hw[0]} but its bg is {bgs[k].shape[1]}x"
                                    f"{bgs[k].shape[0]}; use a bg of the same size, or --resize-bg (resize_bg=True)")
            out.extend(self._run(bgs[i:j], images[i:j], layers))
            i = j
        return out

    @torch.inference_mode()
    def _run(self, bgs: list[np.ndarray], images: list[np.ndarray], layers: bool = True) -> list[Prediction]:
        h, w = images[0].shape[:2]
        wh, ww = self.work_size(h, w)
        try:
            image = _to_tensor(images, (wh, ww), self.device)
            if all(b is bgs[0] for b in bgs):  # one fixed-camera bg: moved and resized once
                bg = _to_tensor(bgs[:1], (wh, ww), self.device).expand(len(bgs), -1, -1, -1)
            elif all(b.shape == bgs[0].shape for b in bgs):
                bg = _to_tensor(bgs, (wh, ww), self.device)
            else:  # --resize-bg with backgrounds of several sizes
                bg = torch.cat([_to_tensor([b], (wh, ww), self.device) for b in bgs])
            reg = None
            if self.align_bg:
                reg = align.register(bg, image)
                bg = align.apply(bg, reg, image)
            if self.device.type == "cuda":
                bg = bg.contiguous(memory_format=torch.channels_last)
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits, depth = self.model(bg, image)
            prob = _resize(torch.sigmoid(logits.float()), (h, w))
            depth = _resize(depth.float(), (h, w))
        except torch.OutOfMemoryError:
            raise UserError(f"a {w}x{h} pair run at {ww}x{wh} does not fit in {self.device} memory; use a smaller "
                            "--size / size=, fewer at a time (--batch-size), or the CPU") from None
        except RuntimeError as e:
            if "allocate" not in str(e) and "out of memory" not in str(e):
                raise
            raise UserError(f"a {w}x{h} pair run at {ww}x{wh} does not fit in memory; use a smaller --size / size= "
                            "or fewer at a time (--batch-size)") from None
        prob_np = prob[:, 0].cpu().numpy()
        depth_np = depth[:, 0].cpu().numpy()
        preds = [Prediction(mask_prob=p, mask=p >= self.threshold, depth=d, depth_unit=self.depth.unit,
                            work_size=(wh, ww), registration=reg.describe(k) if reg is not None else None)
                 for k, (p, d) in enumerate(zip(prob_np, depth_np))]
        if layers:
            add_layers(self, bgs, preds)
        return preds


def _to_tensor(arrays: list[np.ndarray], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(N,3,H,W) float32 in [0,1] resized to `size`; the uint8 pixels travel to the device before conversion
    (4x less to copy)."""
    x = torch.from_numpy(np.stack(arrays)).to(device, non_blocking=True)
    return _resize(x.permute(0, 3, 1, 2).float().div_(255.0), size)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # antialias matters when shrinking (a photo to the training size); when enlarging it equals plain bilinear
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def load_model(path: str | os.PathLike | None = None, device: str | torch.device | None = None,
               **options: Any) -> Predictor:
    """Load a checkpoint (None: the default weights shipped in the package) for prediction.

    `options` go to Predictor: size, native, threshold, batch_size, bf16, camera (a camera.json path or
    CameraProfile: depth in metres, see layers.py), align_bg (False: use the bg as captured, see align.py).
    """
    dev = resolve_device(device)
    if path is not None:
        model, header = load_model_from_checkpoint(path, map_location=dev)
        return Predictor(model, header, dev, **options)
    weights = default_weights("the default weights are not in this installation; pass a checkpoint (--ckpt PATH, "
                              "load_model(path)) or install a maskdepth release that ships them")
    model, header = load_model_from_checkpoint(weights, map_location=dev)
    predictor = Predictor(model, header, dev, **options)
    card = packaged_file(DEFAULT_CARD)
    if card.is_file():
        try:
            predictor.card = json.loads(card.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"maskdepth/{DEFAULT_CARD}: corrupt model card; reinstall maskdepth") from None
    return predictor


def predict_images(modelpath: str | os.PathLike, filepath: str | os.PathLike, bg: str, image: str,
                   device: str | None = None) -> Prediction:
    """Seed-style call: the model file, the folder the pictures are in, and the two file names."""
    folder = Path(filepath)
    return load_model(modelpath, device).predict(folder / bg, folder / image)
