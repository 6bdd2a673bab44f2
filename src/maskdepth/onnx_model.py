"""An exported ONNX model (float or `export --int8`) behind the torch module interface the rest of maskdepth uses:
forward(bg, image) -> (mask_logits, depth), so `predict`, video, `serve`, `calibrate` and the benchmarks run it
through ONNX Runtime wherever a checkpoint path is accepted (`--ckpt model.onnx`).

The checkpoint header travels in the file's metadata (export.py writes it); the model's fingerprint, which camera
profiles are tied to, is that of the file's weights, so a profile made with the float model is refused for the
int8 one (their depths differ by about a per cent).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.errors import UserError
from maskdepth.fileio import require_file

HEADER_KEY = "maskdepth"  # the metadata key of the checkpoint header (JSON), in .safetensors and .onnx files alike
QUANTIZATION_KEY = "maskdepth_quantization"


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session on the CPU. Inputs may live on any device; outputs come back on the inputs'."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        path = Path(path)
        require("onnxruntime", "running an .onnx model")
        try:
            self.session = ort_session(path)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types for a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: not a usable ONNX model ({first[:200]}); export one with maskdepth export "
                            "CKPT --onnx FILE") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if HEADER_KEY not in meta:
            raise UserError(f"{path}: an ONNX file without maskdepth's header; export it with maskdepth export")
        self.header: dict[str, Any] = json.loads(meta[HEADER_KEY])
        self.quantization = meta.get(QUANTIZATION_KEY)
        suffix = "-int8" if self.quantization else "-onnx"
        self.model_name = str(self.header.get("model", "onnx")) + suffix
        kwargs, depth = self.header.get("model_kwargs") or {}, self.header.get("depth") or {}
        self.depth_max = float(kwargs.get("depth_max", depth.get("max", 1.0)))  # the network's own bound
        digest = hashlib.sha256(path.read_bytes()).digest()
        # the file's hash as a buffer: model_fingerprint (camera.py) hashes the state dict, so it sees this
        self.register_buffer("onnx_sha256", torch.frombuffer(bytearray(digest), dtype=torch.uint8))

    def forward(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {"bg": _numpy(bg), "image": _numpy(image)}
        logits, depth = self.session.run(["mask_logits", "depth"], feeds)
        return torch.from_numpy(logits).to(bg.device), torch.from_numpy(depth).to(bg.device)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def require(module: str, purpose: str):
    """Import one of the optional ONNX packages (onnx, onnxruntime) for `purpose`, or one UserError saying how
    to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs the {module} package, which is not installed; "
                        "pip install 'maskdepth[onnx]'") from None


def ort_session(path: str | os.PathLike, providers: str | list[str] = "CPUExecutionProvider",
                threads: int | None = None):
    """An ONNX Runtime session on `path` with every graph optimisation and only its errors logged; `providers`
    in order of preference, `threads` intra-op threads (None: ONNX Runtime's choice)."""
    ort = require("onnxruntime", "ONNX Runtime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=[providers] if isinstance(providers, str) else providers)


def ort_providers() -> list[str]:
    """The execution providers this ONNX Runtime has."""
    return require("onnxruntime", "ONNX Runtime").get_available_providers()


def load_onnx_model(path: str | os.PathLike) -> tuple[OnnxModel, dict[str, Any]]:
    """(model, header) of an exported ONNX file, like checkpoint.load_model_from_checkpoint."""
    require_file(path, "ONNX model")
    model = OnnxModel(path)
    return model, model.header
