"""Inference speed of the default model: PyTorch eager, torch.compile and ONNX Runtime, per resolution, batch 1 and
batched. Writes benchmarks/results/infer.json (infer-cuda.json with --device cuda).

    python benchmarks/infer.py            # CPU: 192x192, 480x640, 1080x1920
    python benchmarks/infer.py --device cuda
    python benchmarks/infer.py --quick    # tiny smoke run

Targets: CPU ONNX Runtime 192x192 batch 1 <= 10 ms per pair; H100 bf16 batch 1 1080p <= 3 ms.
Weights do not change speed: an untrained `maskdepth` network (or --ckpt) is timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="maskdepth", help="registered model to time (default: %(default)s)")
    p.add_argument("--ckpt", default=None, help="time this checkpoint instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=["eager", "compile", "onnx", "onnx-int8"])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64x64, few calls, no compile)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/infer[-cuda].json)")
    args = p.parse_args()

    import torch

    from maskdepth.bench_infer import BATCH_SIZES, SIZES, bench_infer, format_report

    if args.ckpt:
        from maskdepth.predict import load_model

        model = load_model(args.ckpt, "cpu").model
    else:
        from maskdepth.models import create_model

        model = create_model(args.model)
    if args.quick:
        report = bench_infer(model, [(64, 64)], [1, 2], args.device, [b for b in args.backends if b != "compile"],
                             warmup=1, iters=3, max_s=1.0)
    else:
        report = bench_infer(model, list(SIZES), list(BATCH_SIZES), args.device, args.backends)
    report["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report["quick"] = args.quick
    report["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    name = "infer-cuda" if torch.device(args.device).type == "cuda" else "infer"
    out = Path(args.out) if args.out else RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
