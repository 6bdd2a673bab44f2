"""Static int8 quantisation of an exported ONNX model (`maskdepth export --onnx M --int8`), for CPU inference.

Weights are quantised per output channel (int8), activations per tensor (uint8) with ranges from procedural
scene pairs run through the float model (percentile calibration: a few extreme pixels do not stretch a range
for all the others). The graph is QDQ: ONNX Runtime fuses each quantise/dequantise pair around a convolution
into one integer convolution (VNNI on x86).

Two ends stay float, because 8 bits are too coarse there:
- the first convolution after the inputs, which sees bg - image, where camouflage is a difference of a few
  levels of 255;
- everything from the last convolution of each branch to the outputs: a mask logit or a depth quantised to
  256 levels would put a staircase into the depth (a few per cent at every pixel).

The quantised model is accepted only where it agrees with the float model on held-out scene pairs (mask IoU
agreement, median relative depth difference); otherwise nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from maskdepth.data.generator import OnTheFlyGenerator
from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path
from maskdepth.onnx_model import QUANTIZATION_KEY, ort_session

CALIBRATION_SIZE = (192, 256)  # (H, W) of the calibration pairs; ranges are per tensor, so size matters little
CALIBRATION_PAIRS = 32
CALIBRATION_SEED = 52_021  # a generator stream no training run uses
CHECK_SEED = 52_022
CHECK_PAIRS = 16
PERCENTILE = 99.999
# The int8 model must reproduce the float model's masks at least this well (IoU of the two masks) and its
# depth within this median relative difference, on the check pairs.
MIN_MASK_AGREEMENT = 0.95
MAX_DEPTH_DIFF = 0.02


def scene_pairs(n: int, size: tuple[int, int] = CALIBRATION_SIZE, seed: int = CALIBRATION_SEED
                ) -> list[dict[str, np.ndarray]]:
    """`n` procedural (bg, image) pairs as ONNX feeds of batch 1: rooms and foregrounds from the generator, with
    its camera and bg-capture effects (shifts, exposure, noise), so the ranges cover what prediction sees."""
    gen = OnTheFlyGenerator.procedural(max(2, n // 2), max(2, n), size, seed=seed, batch_size=n, device="cpu")
    batch = gen.next_batch()
    return [{"bg": batch["bg"][i:i + 1].numpy().astype(np.float32),
             "image": batch["image"][i:i + 1].numpy().astype(np.float32)} for i in range(n)]


def float_ends(model: Any) -> list[str]:
    """Names of the nodes kept float (module docstring): every node from the inputs up to and including the first
    Conv on each path (a quantised bg - image would feed that Conv 8 bits), and every node from the outputs
    back to and including the first Conv on each path."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: set[str] = set()
    # backwards from each output, through everything up to a Conv
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type != "Conv":
            stack.extend(producer[i] for i in node.input if i in producer)
    # forwards from the inputs, through everything up to a Conv
    seen: set[str] = set()
    stack = [c for i in graph.input for c in consumers.get(i.name, [])]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        keep.add(node.name)
        if node.op_type != "Conv":
            stack.extend(c for o in node.output for c in consumers.get(o, []))
    return sorted(keep)


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  calibration: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Write the int8 version of the float ONNX model `fp32_path` to `out_path` (atomically, metadata kept) and
    return its agreement with the float model (`agreement`). Raises UserError, writing nothing, if it disagrees."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class _Feeds(CalibrationDataReader):
        def __init__(self, feeds):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    feeds = calibration if calibration is not None else scene_pairs(CALIBRATION_PAIRS)
    metadata = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out_path) as out_tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference and constant folding first, as the quantiser expects; symbolic shapes cannot be
        # inferred through the dynamic padding, and are not needed for Conv
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its steps
            quantize_static(str(prepared), str(out_tmp), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            nodes_to_exclude=float_ends(onnx.load(str(prepared))),
                            extra_options={"CalibPercentile": PERCENTILE})
        quantized = onnx.load(str(out_tmp))
        del quantized.metadata_props[:]
        for key, value in {**metadata, QUANTIZATION_KEY: "int8 static QDQ"}.items():
            entry = quantized.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(quantized, str(out_tmp))
        report = agreement(fp32_path, out_tmp, scene_pairs(CHECK_PAIRS, seed=CHECK_SEED))
        if report["mask_agreement"] < MIN_MASK_AGREEMENT or report["depth_diff_median"] > MAX_DEPTH_DIFF:
            raise UserError(f"{out_path}: the int8 model departs from the float one (mask agreement "
                            f"{report['mask_agreement']:.3f} < {MIN_MASK_AGREEMENT} or median depth difference "
                            f"{report['depth_diff_median']:.1%} > {MAX_DEPTH_DIFF:.0%}); nothing was written: "
                            "export without --int8")
    return report


def agreement(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
              feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """How closely `int8_path` reproduces `fp32_path` on `feeds`: IoU of their masks (logit > 0) over all pixels,
    median and 99th percentile of |depth difference| / float depth."""
    sessions = [ort_session(p) for p in (fp32_path, int8_path)]
    inter = union = 0
    rel = []
    for feed in feeds:
        (m32, d32), (m8, d8) = (s.run(["mask_logits", "depth"], feed) for s in sessions)
        a, b = m32 > 0, m8 > 0
        inter += int((a & b).sum())
        union += int((a | b).sum())
        rel.append((np.abs(d8 - d32) / np.maximum(d32, 1e-3)).ravel())
    rel_all = np.concatenate(rel)
    return {"pairs": len(feeds), "size": list(feeds[0]["bg"].shape[-2:]),
            "mask_agreement": inter / union if union else 1.0,
            "depth_diff_median": float(np.median(rel_all)), "depth_diff_p99": float(np.percentile(rel_all, 99))}
