"""Training-step speed and peak memory of every registered model at 64, 112 and 192 px, fp32 and bf16.
Writes benchmarks/results/train_step.json (train_step-quick.json with --quick).

    python benchmarks/train_step.py                   # all models, CPU (and CUDA when present)
    python benchmarks/train_step.py --models maskdepth seed-resunet --sizes 192
    python benchmarks/train_step.py --quick           # tiny smoke run: two models, 64 px, 1 timed step

A step is forward + BCE-with-logits on the mask + L1 on the depth + backward + SGD (momentum 0.9), on random
inputs (speed does not depend on the values). bf16 runs under autocast (CPU or CUDA) with fp32 weights; on CUDA
the model and inputs are channels_last and timing is synchronised. Each (model, size, dtype) runs in a fresh
process so that its peak memory is its own: the peak resident set size (CPU) and, on CUDA, the peak allocated
by the caching allocator.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (64, 112, 192)
DTYPES = ("fp32", "bf16")


def one_config(model: str, size: int, dtype: str, device: str, batch: int, steps: int, max_s: float,
               threads: int | None) -> dict:
    """Time `steps` training steps (after one warm-up step, stopping early after `max_s` seconds)."""
    import torch
    import torch.nn.functional as F

    from maskdepth.models import create_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    net = create_model(model).to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    bg = torch.rand(batch, 3, size, size, device=dev).to(memory_format=fmt)
    image = torch.rand(batch, 3, size, size, device=dev).to(memory_format=fmt)
    mask = (torch.rand(batch, 1, size, size, device=dev) > 0.5).float()
    depth = torch.rand(batch, 1, size, size, device=dev) * net.depth_max

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            mask_logits, pred = net(bg, image)
            loss = F.binary_cross_entropy_with_logits(mask_logits, mask) + F.l1_loss(pred, depth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    step()  # warm-up: allocations, kernel selection
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < steps and (not times or time.perf_counter() - start < max_s):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model, "size": size, "dtype": dtype, "device": dev.type, "batch": batch,
        "threads": torch.get_num_threads(),
        "steps": len(times), "step_ms": round(median * 1e3, 2), "samples_per_s": round(batch / median, 2),
        "peak_rss_mb": round(rss_peak, 1), "rss_growth_mb": round(rss_peak - rss_before, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if cuda else None,
    }


def run_isolated(config: dict) -> dict:
    """Run one configuration in a fresh Python process (own peak memory); returns its result or the error."""
    cmd = [sys.executable, __file__, "--one", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**{k: config[k] for k in ("model", "size", "dtype", "device", "batch")}, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="registered models (default: all)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="square sizes (default: 64 112 192)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default: 4 on CPU, 32 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's choice); 1 gives steadier figures on a busy machine")
    p.add_argument("--max-s", type=float, default=20.0, help="stop timing a configuration after this long")
    p.add_argument("--quick", action="store_true", help="smoke run: two models, 64 px, batch 2, 1 timed step")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/train_step[-quick].json)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration, JSON
    args = p.parse_args()

    if args.one:
        print(json.dumps(one_config(**json.loads(args.one))))
        return 0

    import torch

    from maskdepth.fileio import atomic_write_text
    from maskdepth.models import list_models

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    models = args.models or list_models()
    sizes = args.sizes
    if args.quick:
        models, sizes = args.models or ["maskdepth-small", "seed-updown"], [64]
    results = []
    for device in devices:
        cuda = device.startswith("cuda")
        batch = args.batch or (2 if args.quick else 32 if cuda else 4)
        steps = 1 if args.quick else args.steps or (20 if cuda else 5)
        for model in models:
            for size in sizes:
                for dtype in args.dtypes:
                    r = run_isolated({"model": model, "size": size, "dtype": dtype, "device": device,
                                      "batch": batch, "steps": steps, "max_s": args.max_s,
                                      "threads": args.threads})
                    results.append(r)
                    cost = r.get("error") or (f"{r['samples_per_s']:8.1f} samples/s  {r['step_ms']:9.1f} ms/step  "
                                              f"peak RSS {r['peak_rss_mb']:7.0f} MB"
                                              + (f"  CUDA peak {r['cuda_peak_mb']:7.0f} MB" if r["cuda_peak_mb"] else ""))
                    print(f"{device:5s} {model:26s} {size:4d}px {dtype}  batch {batch:3d}: {cost}", flush=True)
    report = {
        "benchmark": "train_step",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "step": "forward + BCE(mask) + L1(depth) + backward + SGD(momentum 0.9); bf16 = autocast",
        "results": results,
    }
    out = Path(args.out) if args.out else RESULTS / f"train_step{'-quick' if args.quick else ''}.json"
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
