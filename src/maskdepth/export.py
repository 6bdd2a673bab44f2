"""ONNX export with dynamic batch, height and width, checked against PyTorch through ONNX Runtime.

The file is written to a temporary name, checked, and only then renamed into place: an export that does not
reproduce the PyTorch model never appears at the output path. The checkpoint header travels in the ONNX file's
metadata (key `maskdepth`), so depth unit and training size stay with the weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.checkpoint import load_model_from_checkpoint
from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path
from maskdepth.onnx_model import HEADER_KEY, OnnxModel, ort_session, require
from maskdepth.quantize import quantize_onnx

INPUTS = ("bg", "image")
OUTPUTS = ("mask_logits", "depth")
OPSET = 17
EXPORT_SIZE = (128, 128)  # tracing size; the graph takes any H, W
CHECK_SIZE = (75, 101)  # parity size: odd, non-square and unlike EXPORT_SIZE, so padding and dynamic shapes run
ATOL = 1e-4


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, header: dict[str, Any] | None = None,
                size: tuple[int, int] = EXPORT_SIZE, opset: int = OPSET, check: bool = True,
                atol: float = ATOL) -> dict[str, Any]:
    """Export `model` (forward(bg, image) -> (mask_logits, depth)) to `path`; return the parity report
    (empty when `check` is False). Raises UserError, leaving nothing at `path`, if parity fails."""
    onnx = require("onnx", "ONNX export")
    if isinstance(model, OnnxModel):
        raise UserError(f"{model.model_name}: is an ONNX model already; export the .safetensors checkpoint it came "
                        "from")
    model = model.to("cpu").float().eval()
    h, w = size
    example = (torch.rand(1, 3, h, w), torch.rand(1, 3, h, w))
    dynamic = {name: {0: "batch", 2: "height", 3: "width"} for name in INPUTS + OUTPUTS}
    report: dict[str, Any] = {}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():  # tracer chatter about shape arithmetic, which is what we want traced
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example, str(tmp), input_names=list(INPUTS), output_names=list(OUTPUTS),
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        if header:
            entry = proto.metadata_props.add()
            entry.key, entry.value = HEADER_KEY, json.dumps(header, sort_keys=True)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if check:
            report = check_parity(model, tmp)
            if report["max_abs_diff"] > atol:
                raise UserError(f"{path}: ONNX Runtime differs from PyTorch by {report['max_abs_diff']:.3g} "
                                f"(> {atol:g}) at {report['size'][1]}x{report['size'][0]}; the model uses an "
                                "operation the exporter does not reproduce, nothing was written")
    return report


def scene_pair(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real-looking (N,3,H,W) float32 inputs: a shaded, textured room-like bg and the same scene with an object
    standing in it, re-captured with a little exposure change and noise (as the training bg is)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = y / h, x / w
    bgs, images = [], []
    for _ in range(n):
        base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
        texture = 0.08 * np.sin(2 * np.pi * (rng.uniform(2, 8) * x + rng.uniform(2, 8) * y ** 2))
        floor = np.where(y > 0.55, 0.15, 0.0)  # a floor darker than the wall
        scene = np.clip(base[:, None, None] * (0.6 + 0.5 * y) + texture - floor, 0, 1)
        cx, cy, rx, ry = rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.7), rng.uniform(0.08, 0.2), rng.uniform(0.15, 0.3)
        alpha = np.clip(1.5 - ((x - cx) ** 2 / rx ** 2 + (y - cy) ** 2 / ry ** 2), 0, 1)  # soft edge
        obj = rng.uniform(0, 1, 3).astype(np.float32)[:, None, None] * (0.7 + 0.3 * np.cos(8 * x))
        image = scene * (1 - alpha) + obj * alpha
        bg = np.clip(scene * rng.uniform(0.95, 1.05) + rng.normal(0, 0.01, scene.shape), 0, 1)
        bgs.append(bg)
        images.append(image)
    return np.stack(bgs).astype(np.float32), np.stack(images).astype(np.float32)


def check_parity(model: torch.nn.Module, onnx_path: str | os.PathLike, size: tuple[int, int] = CHECK_SIZE,
                 batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Largest absolute difference between PyTorch (CPU, fp32) and ONNX Runtime over both outputs, on random
    inputs and on real-looking scenes, at `size` with `batch` pairs."""
    require("onnxruntime", "the ONNX parity check")
    session = ort_session(onnx_path)
    model = model.to("cpu").float().eval()
    h, w = size
    rng = np.random.default_rng(seed)
    cases = {
        "random": (rng.random((batch, 3, h, w), dtype=np.float32), rng.random((batch, 3, h, w), dtype=np.float32)),
        "scene": scene_pair(batch, h, w, seed),
    }
    diffs: dict[str, float] = {}
    for name, (bg, image) in cases.items():
        got = session.run(list(OUTPUTS), {"bg": bg, "image": image})
        with torch.inference_mode():
            want = model(torch.from_numpy(bg), torch.from_numpy(image))
        for out_name, g, t in zip(OUTPUTS, got, want):
            if g.shape != tuple(t.shape):
                raise UserError(f"{onnx_path}: ONNX output {out_name} has shape {g.shape}, PyTorch {tuple(t.shape)}; "
                                "the export did not keep the size dynamic")
            diffs[f"{name}/{out_name}"] = float(np.abs(g - t.numpy()).max())
    return {"size": [h, w], "batch": batch, "max_abs_diff": max(diffs.values()), "diffs": diffs}


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                      size: tuple[int, int] = EXPORT_SIZE, opset: int = OPSET, check: bool = True,
                      atol: float = ATOL, int8: bool = False) -> dict[str, Any]:
    """`maskdepth export`: checkpoint -> ONNX file. Refuses to replace an existing file unless `force`.
    `int8`: the float export (parity-checked) is quantised (maskdepth.quantize); the report gains "int8"."""

    out = Path(out)
    if ckpt is not None and out.exists() and out.resolve() == Path(ckpt).resolve():
        raise UserError(f"{out}: is the checkpoint being exported; give another --onnx path")
    if out.exists() and not force:
        raise UserError(f"{out}: already exists; pass --force to replace it or choose another --onnx path")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file path such as {out / 'model.onnx'}")
    model, header = load_model_from_checkpoint(ckpt, map_location="cpu")
    if not int8:
        return export_onnx(model, out, header, size=size, opset=opset, check=check, atol=atol)
    require("onnxruntime", "ONNX export")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "float.onnx"
        report = export_onnx(model, fp32, header, size=size, opset=opset, check=check, atol=atol)
        report["int8"] = quantize_onnx(fp32, out)
    return report
