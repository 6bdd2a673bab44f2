"""On-the-fly generator speed: samples/s of whole batch dicts (placement, composite, capture jitter) at 192x192.
Writes benchmarks/results/generator.json (generator-quick.json with --quick).

    python benchmarks/generator.py                    # CPU, and CUDA when present
    python benchmarks/generator.py --device cuda      # one device
    python benchmarks/generator.py --quick            # tiny smoke run

Target on an H100: >= 100,000 samples/s, so the generator is never what a training step waits on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(device: str, size: int, n_bg: int, n_cut: int, batch: int, batches: int, capture: bool) -> dict:
    import torch

    from maskdepth.data.capture import CaptureConfig
    from maskdepth.data.generator import OnTheFlyGenerator

    t0 = time.perf_counter()
    gen = OnTheFlyGenerator.procedural(n_bg, n_cut, size, seed=0, batch_size=batch,
                                       capture=CaptureConfig() if capture else None, device=device)
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):  # warm up: kernels, allocator
        next(gen)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch_dict = next(gen)
    sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = batch * batches
    out = {"device": device, "size": size, "batch": batch, "batches": batches, "capture": capture,
           "backgrounds": n_bg, "cutouts": n_cut, "build_banks_s": round(build_s, 2),
           "samples_per_s": round(n / wall, 1), "ms_per_batch": round(wall / batches * 1e3, 3),
           "mask_coverage": round(float(batch_dict["mask"].mean()), 4)}
    if device == "cpu":
        out["threads"] = torch.get_num_threads()
        out["cpu_ms_per_sample"] = round(cpu / n * 1e3, 3)
    else:
        out["gpu"] = torch.cuda.get_device_name(device)
        out["max_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", action="append", help="cpu, cuda, cuda:N (repeatable; default: cpu and cuda if any)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64 px, few assets and batches)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's); 1 gives steadier figures on a busy machine")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/generator[-quick].json)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from maskdepth.fileio import atomic_write_text

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    runs = []
    for dev in devices:
        gpu = dev.startswith("cuda")
        if args.quick:
            setting = dict(size=64, n_bg=4, n_cut=4, batch=16, batches=3)
        else:
            setting = dict(size=192, n_bg=100, n_cut=100, batch=512 if gpu else 64, batches=200 if gpu else 10)
        for capture in (True, False):
            runs.append(measure(dev, capture=capture, **setting))
            print(json.dumps(runs[-1]))
    result = {"benchmark": "generator", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "note": "shared machine: CPU figures are indicative", "runs": runs,
              "target": {"cuda_samples_per_s": 100_000}}
    out = Path(args.out) if args.out else RESULTS / f"generator{'-quick' if args.quick else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
