"""`maskdepth bench-infer`: latency and throughput of a model per resolution and batch size, for PyTorch eager,
torch.compile, ONNX Runtime and ONNX Runtime on the int8 export (CPU), as JSON.

Every timed call ends with a device synchronisation, so GPU figures are real. Inputs are already on the device
(the model's cost, not the decode's). A backend that cannot run here (torch.compile without a C++ compiler,
ONNX Runtime without a CUDA provider for --device cuda) is recorded as skipped with the reason.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.device import resolve_device
from maskdepth.errors import UserError
from maskdepth.export import export_onnx
from maskdepth.onnx_model import ort_session
from maskdepth.progress import Progress
from maskdepth.quantize import quantize_onnx

BACKENDS = ("eager", "compile", "onnx", "onnx-int8")
SIZES = ((192, 192), (480, 640), (1080, 1920))
BATCH_SIZES = (1, 8)


def time_calls(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, iters: int,
               max_s: float) -> list[float]:
    """Seconds per call over up to `iters` calls (at least 3), stopping early once `max_s` have been spent."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 3 or time.perf_counter() - start < max_s):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def _summary(times: list[float], batch: int) -> dict[str, Any]:
    med = statistics.median(times)
    return {"iters": len(times), "latency_ms": {"median": med * 1e3, "min": min(times) * 1e3,
                                                "p90": float(np.percentile(times, 90)) * 1e3},
            "pairs_per_s": batch / med}


def bench_infer(model: torch.nn.Module, sizes: list[tuple[int, int]] | tuple = SIZES,
                batch_sizes: list[int] | tuple = BATCH_SIZES, device: str | None = None,
                backends: list[str] | tuple = BACKENDS, bf16: bool | None = None, warmup: int = 3,
                iters: int = 20, max_s: float = 5.0, progress: bool = True) -> dict[str, Any]:
    """Time `model` (forward(bg, image)) for every backend x size x batch size. bf16 autocast (None: on CUDA)
    applies to eager and compile; ONNX Runtime runs the fp32 graph."""

    dev = resolve_device(device)
    bf16 = dev.type == "cuda" if bf16 is None else bf16
    model = model.to("cpu").float().eval()
    report: dict[str, Any] = {
        "model": getattr(model, "model_name", type(model).__name__),
        "model_kwargs": getattr(model, "model_kwargs", {}),
        "params": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "device_type": dev.type, "cpu_threads": torch.get_num_threads(), "bf16": bf16,
        "torch": torch.__version__, "warmup": warmup, "results": [], "skipped": {},
    }
    runners: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("onnx", "onnx-int8"):  # exported first: export works on a CPU fp32 copy of the model
            if backend in backends:
                runner = _onnx_runner(model, Path(tmp), dev, report, int8=backend == "onnx-int8")
                if runner is not None:
                    runners[backend] = runner
        model = model.to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if "eager" in backends:
            runners["eager"] = _torch_runner(model, dev, bf16)
        if "compile" in backends:
            runners["compile"] = _torch_runner(torch.compile(model), dev, bf16)
        order = [b for b in BACKENDS if b in runners]
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        with Progress(len(order) * len(sizes) * len(batch_sizes), "bench-infer", unit="config",
                      enabled=progress) as bar:
            for backend in order:
                for h, w in sizes:
                    for n in batch_sizes:
                        bar.update(1, at=f"{backend} {h}x{w} b{n}")
                        if backend in report["skipped"]:
                            continue
                        gen = torch.Generator().manual_seed(0)
                        bg = torch.rand(n, 3, h, w, generator=gen).to(dev)
                        image = torch.rand(n, 3, h, w, generator=gen).to(dev)
                        if dev.type == "cuda" and not backend.startswith("onnx"):
                            bg = bg.contiguous(memory_format=torch.channels_last)
                            image = image.contiguous(memory_format=torch.channels_last)
                        entry = {"backend": backend, "size": [h, w], "batch": n}
                        try:
                            t0 = time.perf_counter()
                            runners[backend](bg, image)  # first call: compilation, allocator warm-up
                            sync()
                            entry["first_call_s"] = time.perf_counter() - t0
                            times = time_calls(partial(runners[backend], bg, image), sync, warmup, iters, max_s)
                        except torch.OutOfMemoryError:
                            entry["skipped"] = "out of device memory"
                            torch.cuda.empty_cache()
                        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
                            if backend != "compile":
                                raise
                            report["skipped"]["compile"] = f"torch.compile cannot run here: {_first_line(e)}"
                            continue
                        else:
                            entry.update(_summary(times, n))
                        report["results"].append(entry)
    return report


def _torch_runner(model: Callable, dev: torch.device, bf16: bool) -> Callable:
    def run(bg: torch.Tensor, image: torch.Tensor):
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return model(bg, image)

    return run


def _onnx_runner(model: torch.nn.Module, folder: Path, dev: torch.device, report: dict[str, Any],
                 int8: bool = False):
    """An ONNX Runtime session on the benchmark device, or None (reason in report['skipped'])."""
    name = "onnx-int8" if int8 else "onnx"
    try:
        import onnxruntime as ort
    except ImportError:
        report["skipped"][name] = "onnxruntime is not installed (pip install maskdepth[onnx])"
        return None

    provider = "CUDAExecutionProvider" if dev.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        report["skipped"][name] = f"onnxruntime has no {provider} (install onnxruntime-gpu for CUDA)"
        return None
    if int8 and dev.type == "cuda":
        report["skipped"][name] = "the int8 export is for CPU inference"
        return None
    path = folder / "model.onnx"
    if not path.exists():
        export_onnx(model, path, check=True)
    if int8:
        try:
            report["int8_agreement"] = quantize_onnx(path, folder / "model-int8.onnx")
        except UserError as e:  # an untrained network quantises badly; the float backends still run
            report["skipped"][name] = str(e)
            return None
        path = folder / "model-int8.onnx"
    session = ort_session(path, provider)
    report["onnxruntime"] = ort.__version__
    if dev.type == "cpu":
        def run(bg: torch.Tensor, image: torch.Tensor):
            return session.run(None, {"bg": bg.numpy(), "image": image.numpy()})
        return run

    def run_cuda(bg: torch.Tensor, image: torch.Tensor):
        # inputs and outputs stay on the GPU (I/O binding), like the torch backends
        binding = session.io_binding()
        for name, t in (("bg", bg), ("image", image)):
            binding.bind_input(name, "cuda", dev.index or 0, np.float32, list(t.shape), t.data_ptr())
        for name in ("mask_logits", "depth"):
            binding.bind_output(name, "cuda", dev.index or 0)
        session.run_with_iobinding(binding)
        return binding
    return run_cuda


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def format_report(report: dict) -> str:
    """One line per timed configuration, then the backends that could not run and why."""
    lines = []
    for r in report["results"]:
        h, w = r["size"]
        cost = r.get("skipped") or f"{r['latency_ms']['median']:8.2f} ms  {r['pairs_per_s']:8.1f} pairs/s"
        lines.append(f"{r['backend']:8s} {h:5d}x{w:<5d} batch {r['batch']:2d}: {cost}")
    lines += [f"{backend:8s} skipped: {why}" for backend, why in report["skipped"].items()]
    return "\n".join(lines)
