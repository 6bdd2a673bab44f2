"""Depth teacher: a monocular depth network the user supplies, giving depth for photos that have none.

The model is an ONNX file (run with ONNX Runtime, CPU or CUDA) or a TorchScript file (torch.jit.load). A
TorchScript file is code as well as weights: loading one runs it, so pass only a file you trust. What the network
expects and returns is described by `TeacherSettings`, read from a JSON file beside the model (`midas.onnx` ->
`midas.json`) and from explicit overrides (command-line flags), overrides winning.

`DepthTeacher.predict(images)` takes RGB uint8 pictures of any size and returns depth maps at each picture's own
size: disparity (inverse depth) is turned into depth; metric output is in metres; relative output is normalised
per picture into [MIN_RELATIVE, 1], so every relative map has its largest value at 1 and the same floor. A value
the network gives as non-finite (or non-positive metric) is 0, "unknown", as everywhere in maskdepth. Results are
cached on disk by content hash: sha256(model file, settings, picture) -> depth, so a rerun computes nothing twice.

Longer than most modules: the settings, the two runners, the cache and the teacher are one feature whose parts
are used only through `DepthTeacher` (and `format_flag` for the command line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from maskdepth.errors import UserError
from maskdepth.fileio import atomic_path, require_file
from maskdepth.onnx_model import ort_providers, ort_session
from maskdepth.progress import Progress
from maskdepth.sizes import parse_size

# Relative maps lie in [MIN_RELATIVE, 1]: inverting a disparity near 0 (sky, a far window) would give a depth so
# large that the rest of the picture shrinks into a few 16-bit levels; a 100:1 range keeps the near field resolved.
MIN_RELATIVE = 0.01
INPUT_RANGES = ("0-1", "0-255")
OUTPUT_KINDS = ("depth", "disparity")
UNITS = ("metres", "relative")
# Bump when preprocessing or postprocessing changes, so old cache entries are not reused.
CACHE_VERSION = 1


@dataclass(frozen=True)
class TeacherSettings:
    """How to feed the network and read its output (MODEL.json keys have these names)."""

    input_size: tuple[int, int] | None = None  # (H, W) the network takes; None: each picture's own size
    input_range: str = "0-1"  # pixel values before mean/std: "0-1" or "0-255"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per RGB channel, in input_range units
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    output: str = "depth"  # "depth" or "disparity" (inverse depth)
    unit: str = "relative"  # "metres" (metric network) or "relative" (depth up to scale)
    scale: float = 1.0  # metric only: metres = scale * output (depth) or scale / output (disparity)
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.input_size is not None:
            if len(self.input_size) != 2 or min(int(v) for v in self.input_size) < 8:
                raise ValueError(f"input_size must be [H, W] with both >= 8, not {list(self.input_size)}")
            object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {', '.join(INPUT_RANGES)}, not {self.input_range!r}")
        for name in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), not {len(v)}")
            object.__setattr__(self, name, v)
        if min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, not {list(self.std)}")
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, not {self.output!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {self.unit!r}")
        if not float(self.scale) > 0:
            raise ValueError(f"scale must be > 0, not {self.scale}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# the `maskdepth data make` flag of each setting
FLAGS = {"input_size": "--teacher-size", "input_range": "--teacher-input", "mean": "--teacher-mean",
         "std": "--teacher-std", "output": "--teacher-output", "unit": "--teacher-unit", "scale": "--teacher-scale",
         "batch_size": "--teacher-batch"}

_EXAMPLES = {"input_size": "256x256", "mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225", "scale": "10",
             "batch_size": "8"}


def parse_flag(key: str, text: str) -> Any:
    """A setting's value from its flag's text: HxW (or one side) for input_size, R,G,B for mean and std."""
    try:
        if key == "input_size":  # the one size reading; the minimum is the settings' own (>= 8)
            return list(parse_size(text, FLAGS[key], minimum=8))
        if key in ("mean", "std"):
            return [float(x) for x in text.split(",")]
        if key == "scale":
            return float(text)
        if key == "batch_size":
            return int(text)
    except ValueError:
        raise UserError(f"{FLAGS[key]} {text}: not a valid value, e.g. {FLAGS[key]} {_EXAMPLES[key]}") from None
    return text


def format_flag(key: str, value: Any) -> str:
    """`--teacher-... VALUE` for a setting (the inverse of parse_flag), for a dataset's recorded command."""
    if key == "input_size":
        text = f"{value[0]}x{value[1]}"
    elif key in ("mean", "std"):
        text = ",".join(f"{float(v):g}" for v in value)
    else:
        text = str(value)
    return f"{FLAGS[key]} {text}"


def settings_file(model_path: str | os.PathLike) -> Path:
    """The JSON beside a model that describes it: `midas.onnx` -> `midas.json`."""
    return Path(model_path).with_suffix(".json")


def load_settings(model_path: str | os.PathLike, **overrides: Any) -> TeacherSettings:
    """Defaults, then MODEL.json beside the model if present, then `overrides` (None values are ignored)."""
    fields = {f.name for f in dataclasses.fields(TeacherSettings)}
    values: dict[str, Any] = {}
    js = settings_file(model_path)
    if js.is_file():
        try:
            data = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{js}: not valid JSON ({e}); fix it or remove it and pass teacher flags") from None
        if not isinstance(data, dict):
            raise UserError(f"{js}: must hold a JSON object of teacher settings ({', '.join(sorted(fields))})")
        unknown = sorted(set(data) - fields)
        if unknown:
            raise UserError(f"{js}: unknown teacher setting(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(fields))}")
        values.update(data)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown teacher setting(s): {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TeacherSettings(**values)
    except (ValueError, TypeError) as e:
        where = js if js.is_file() else "teacher flags"
        raise UserError(f"{model_path}: bad teacher setting from {where}: {e}") from None


# ---------------------------------------------------------------------------------------------------- runners


class _OnnxRunner:
    """ONNX Runtime session on (N,3,H,W) float32; CUDA when asked for and available, else CPU."""

    def __init__(self, path: Path, device: str, threads: int | None):
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort_providers():
                raise UserError(f"{path}: ONNX Runtime here has no CUDA provider; install onnxruntime-gpu or run "
                                "the teacher on the CPU")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort_session(path, providers, threads)
        except UserError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for any unreadable model
            raise UserError(f"{path}: not a usable ONNX model ({_first_line(e)}); give an .onnx depth model "
                            "or a TorchScript file") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = ", ".join(str(i.shape) for i in inputs)
            raise UserError(f"{path}: the model takes {len(inputs)} input(s) of shape {shapes}; a depth teacher "
                            "takes one image batch (N, 3, H, W)")
        shape = inputs[0].shape
        if isinstance(shape[1], int) and shape[1] != 3:
            raise UserError(f"{path}: the model's input has {shape[1]} channels, shape {shape}; a depth teacher "
                            "takes RGB (N, 3, H, W)")
        if "float" not in inputs[0].type or "16" in inputs[0].type:
            raise UserError(f"{path}: the model's input is {inputs[0].type}; a depth teacher takes float32 "
                            "(re-export it with a float input)")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.static_size = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0])


class _TorchScriptRunner:
    """torch.jit.load'ed module on (N,3,H,W) float32 (first output if it returns several); `threads` torch
    threads while it runs."""

    fixed_batch = None
    static_size = None

    def __init__(self, path: Path, device: str, threads: int | None):
        self.torch = torch
        self.device = torch.device(device)
        self.threads = threads
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"{path}: no CUDA device for the teacher here; run it on the CPU")
        try:
            self.module = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{path}: not a TorchScript file ({_first_line(e)}); a state dict or a pickled model "
                            "cannot be used: save the network with torch.jit.save(torch.jit.trace(...)) or "
                            "export it to ONNX") from None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        before = torch.get_num_threads()
        if self.threads:  # the same thread count gives the same bits (make relies on it)
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                y = self.module(torch.from_numpy(x).to(self.device))
        finally:
            torch.set_num_threads(before)
        while isinstance(y, (tuple, list)):
            y = y[0]
        if isinstance(y, dict):
            y = next(iter(y.values()))
        return y.float().cpu().numpy()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _model_kind(path: Path) -> str:
    """'torchscript' for a zip archive (what torch.jit.save writes), else 'onnx' (a protobuf)."""
    return "torchscript" if zipfile.is_zipfile(path) else "onnx"


# ------------------------------------------------------------------------------------------------------ cache


class TeacherCache:
    """Depth maps on disk by key: KEY[:2]/KEY.npy, float32, written atomically (safe with many processes)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        try:
            with open(self._path(key), "rb") as f:
                return np.load(f, allow_pickle=False)
        except (OSError, ValueError):  # missing, or damaged: computed (again) and rewritten
            return None

    def put(self, key: str, depth: np.ndarray) -> None:
        with atomic_path(self._path(key)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(depth, dtype=np.float32), allow_pickle=False)


# ---------------------------------------------------------------------------------------------------- teacher


class DepthTeacher:
    """A depth network plus its settings. Build with `DepthTeacher.from_path`."""

    def __init__(self, path: Path, settings: TeacherSettings, runner: Callable[[np.ndarray], np.ndarray],
                 fingerprint: str, cache: TeacherCache | None = None):
        self.path = path
        self.settings = settings
        self.runner = runner
        self.fingerprint = fingerprint
        self.cache = cache
        self.computed = 0  # pictures the network actually ran on (cache misses), for reports and tests
        fixed = getattr(runner, "fixed_batch", None)
        self.batch_size = fixed if fixed else settings.batch_size

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, device: str = "cpu", cache_dir: str | os.PathLike | None = None,
                  threads: int | None = None, **overrides: Any) -> DepthTeacher:
        """Load an ONNX or TorchScript depth model; `overrides` are TeacherSettings fields (None = not set)."""
        path = require_file(path, "depth teacher model")
        settings = load_settings(path, **overrides)
        kind = _model_kind(path)
        runner = (_OnnxRunner if kind == "onnx" else _TorchScriptRunner)(path, device, threads)
        static = runner.static_size
        if static is not None:
            if settings.input_size is not None and tuple(settings.input_size) != tuple(static):
                raise UserError(f"{path}: the model takes a fixed input of {static[0]}x{static[1]} but the "
                                f"teacher settings say {settings.input_size[0]}x{settings.input_size[1]}; "
                                "remove input_size or set it to the model's size")
            settings = dataclasses.replace(settings, input_size=tuple(static))
        return cls(path, settings, runner, _fingerprint(path, settings),
                   TeacherCache(cache_dir) if cache_dir is not None else None)

    @property
    def unit(self) -> str:
        """'metres' or 'relative': the unit of what `predict` returns."""
        return self.settings.unit

    def describe(self) -> dict[str, Any]:
        """What a dataset's metadata records about its teacher."""
        return {"model": self.path.name, "fingerprint": self.fingerprint, **self.settings.to_json()}

    def predict(self, images: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        """Depth (H,W) float32 for each RGB uint8 (H,W,3) picture, at that picture's size (0 = unknown)."""
        keys = [self._key(im) for im in images]
        out: list[np.ndarray | None] = [self.cache.get(k) if self.cache else None for k in keys]
        todo = [i for i, d in enumerate(out) if d is None or d.shape != images[i].shape[:2]]
        # pictures of one network input size go together in batches
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            groups.setdefault(self._net_size(images[i]), []).append(i)
        with Progress(len(todo), "depth teacher", unit="img", enabled=progress and bool(todo)) as bar:
            for size, idx in groups.items():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start:start + self.batch_size]
                    raw = self._run(np.stack([self._prepare(images[i], size) for i in chunk]), size)
                    for i, r in zip(chunk, raw):
                        d = self._finish(r, images[i].shape[:2])
                        out[i] = d
                        if self.cache is not None:
                            self.cache.put(keys[i], d)
                    self.computed += len(chunk)
                    bar.update(len(chunk))
        return out  # type: ignore[return-value]

    # -- steps

    def _key(self, image: np.ndarray) -> str:
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"teacher input must be (H,W,3) uint8, got {image.shape} {image.dtype}")
        h = hashlib.sha256(self.fingerprint.encode())
        h.update(f"{image.shape[0]}x{image.shape[1]}".encode())
        h.update(image.data)
        return h.hexdigest()

    def _net_size(self, image: np.ndarray) -> tuple[int, int]:
        return self.settings.input_size or (image.shape[0], image.shape[1])

    def _prepare(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """uint8 (H,W,3) -> float32 (3,h,w) normalised as the network expects."""
        if image.shape[:2] != size:
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
        s = self.settings
        x = image.astype(np.float32) * (1.0 if s.input_range == "0-255" else 1.0 / 255.0)
        x = (x - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _run(self, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Network output as (N, h, w) float32; a failure or a wrong shape is one line naming the model."""
        n = x.shape[0]
        fixed = getattr(self.runner, "fixed_batch", None)
        if fixed and n < fixed:  # a model exported with a fixed batch: fill the last batch with copies
            x = np.concatenate([x, np.repeat(x[-1:], fixed - n, axis=0)])
        try:
            y = np.asarray(self.runner(x), dtype=np.float32)
        except Exception as e:  # the user's network can fail in any way; say which file and which input
            raise UserError(f"{self.path}: the model failed on an input of shape {list(x.shape)} "
                            f"({_first_line(e)}); check its input size ({settings_file(self.path).name} "
                            "input_size or --teacher-size) and normalisation") from None
        y = y[:n] if y.ndim else y
        if y.ndim == 4 and y.shape[1] == 1:
            y = y[:, 0]
        elif y.ndim == 4 and y.shape[3] == 1:
            y = y[..., 0]
        if y.ndim != 3 or y.shape[0] != n:
            raise UserError(f"{self.path}: the model returned shape {list(y.shape)} for input {list(x.shape)}; "
                            "a depth teacher returns one map per image: (N, 1, H, W) or (N, H, W)")
        return y

    def _finish(self, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Raw map -> depth at `shape` in the teacher's unit (relative: [MIN_RELATIVE, 1]; 0 = unknown)."""
        if raw.shape != shape:
            raw = np.asarray(Image.fromarray(np.ascontiguousarray(raw), "F").resize((shape[1], shape[0]),
                                                                                   Image.BILINEAR))
        raw = raw.astype(np.float64)
        known = np.isfinite(raw)
        s = self.settings
        if s.unit == "metres":
            known &= raw > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                d = s.scale * raw if s.output == "depth" else s.scale / raw
            known &= np.isfinite(d)
        else:
            top = raw[known].max() if known.any() else 0.0
            if not top > 0:
                return np.zeros(shape, np.float32)
            v = np.clip(np.where(known, raw, top), top * MIN_RELATIVE, top) / top  # in [MIN_RELATIVE, 1]
            d = v if s.output == "depth" else v.min() / v  # inverse depth -> depth, again max 1, >= MIN
        return np.where(known, d, 0.0).astype(np.float32)


def _fingerprint(path: Path, settings: TeacherSettings) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps({"settings": settings.to_json(), "cache_version": CACHE_VERSION},
                        sort_keys=True).encode())
    return h.hexdigest()
