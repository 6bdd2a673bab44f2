"""`maskdepth predict`, `maskdepth export` and `maskdepth bench-infer`: using a trained model."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="mask and depth for image(s) given the empty scene",
        description="Predict the foreground mask and depth of IMAGE given BG, the picture of the empty scene. "
                    "Writes mask.png (the binary mask at --threshold), mask_prob.png (8-bit probability), depth.png "
                    "(16-bit; depth.json gives unit and scale), depth_color.png and overlay.png. With an image "
                    "folder: one bg file for all images (fixed camera) or a bg folder matched by file name; outputs "
                    "go to OUT/<image name>/.")
    _add_ckpt(p)
    p.add_argument("--bg", required=True, help="background picture, or a folder of them named like the images")
    p.add_argument("--image", required=True, help="picture with the foreground, or a folder of them")
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--size", type=int, default=None,
                       help="run at about SIZE x SIZE pixels, aspect ratio kept (default: the training size)")
    where.add_argument("--native", action="store_true", help="run at the input's own size")
    p.add_argument("--resize-bg", action="store_true", help="resample a bg whose size differs from the image's")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="mask.png is on where the probability is at least this, in (0, 1) (default: 0.5)")
    _add_device(p)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per model call (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--resume", action="store_true",
                   help="leave out pairs whose outputs are complete (finish an interrupted folder)")
    p.add_argument("--skip-bad", action="store_true",
                   help="report a picture that cannot be read or predicted and go on with the others")
    p.set_defaults(func=run_predict)

    e = sub.add_parser("export", help="export a checkpoint to ONNX (checked against PyTorch)",
                       description="Export CKPT to ONNX with dynamic batch, height and width (inputs bg and image, "
                                   "outputs mask_logits and depth), then check ONNX Runtime against PyTorch at "
                                   "another size; the file appears only if they agree.")
    e.add_argument("ckpt", help="model checkpoint (.safetensors)")
    e.add_argument("--onnx", required=True, help="output .onnx file")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    e.add_argument("--atol", type=float, default=1e-4, help="largest allowed abs difference (default: %(default)s)")
    e.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    e.add_argument("--force", action="store_true", help="replace an existing output file")
    e.set_defaults(func=run_export)

    b = sub.add_parser("bench-infer", help="inference latency and throughput (eager, compiled, ONNX Runtime)",
                       description="Time a model per resolution and batch size with PyTorch eager, torch.compile "
                                   "and ONNX Runtime; prints and optionally writes JSON. Weights do not change "
                                   "speed, so --model NAME times an untrained network.")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default weights)")
    src.add_argument("--model", default=None, help="time an untrained registered model instead (e.g. maskdepth)")
    b.add_argument("--sizes", nargs="+", default=None, metavar="HxW",
                   help="input sizes (default: 192x192 480x640 1080x1920)")
    b.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="batch sizes (default: 1 8)")
    b.add_argument("--backends", nargs="+", default=None, choices=["eager", "compile", "onnx"],
                   help="what to time (default: all)")
    b.add_argument("--iters", type=int, default=20, help="timed calls per configuration (default: %(default)s)")
    b.add_argument("--max-seconds", type=float, default=5.0,
                   help="stop timing a configuration after this long (at least 3 calls; default: %(default)s)")
    _add_device(b)
    b.add_argument("--quick", action="store_true", help="tiny smoke run: 64x64, batch 1 and 2, few calls")
    b.add_argument("--out", default=None, help="write the JSON report here")
    b.add_argument("--force", action="store_true", help="replace an existing --out file")
    b.set_defaults(func=run_bench)


def _add_ckpt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=None, help="model checkpoint (default: the weights shipped with maskdepth)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is one)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")


def run_predict(args) -> int:
    from maskdepth.errors import UserError
    from maskdepth.predict import load_model, plan_outputs, predict_files

    if args.size is not None and args.size < 8:
        raise UserError(f"--size {args.size}: too small; give a side of at least 8 pixels")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if not 0 < args.threshold < 1:  # nan fails too
        raise UserError(f"--threshold {args.threshold}: give a probability strictly between 0 and 1")
    # bad paths fail before the model loads
    plan = plan_outputs(args.bg, args.image, args.out, force=args.force, resume=args.resume)
    if not plan:
        print(f"nothing to do: every pair already has its outputs in {args.out}")
        return 0
    predictor = load_model(args.ckpt, args.device, size=args.size, native=args.native, threshold=args.threshold,
                           batch_size=args.batch_size, bf16=False if args.fp32 else None)
    skipped = predict_files(predictor, plan, resize_bg=args.resize_bg, skip_bad=args.skip_bad)
    where = plan[0][2] if len(plan) == 1 else f"{args.out}/<image name>/"
    print(f"wrote {len(plan) - len(skipped)} prediction(s) to {where} (depth in {predictor.depth_unit})"
          + (f"; skipped {len(skipped)} bad pair(s), listed above" if skipped else ""))
    return 0


def run_export(args) -> int:
    from maskdepth.export import export_checkpoint

    report = export_checkpoint(args.ckpt, args.onnx, force=args.force, opset=args.opset,
                               check=not args.no_check, atol=args.atol)
    if report:
        h, w = report["size"]
        print(f"wrote {args.onnx}; ONNX Runtime matches PyTorch at {w}x{h}, batch {report['batch']} "
              f"(max abs diff {report['max_abs_diff']:.2g})")
    else:
        print(f"wrote {args.onnx} (not checked)")
    return 0


def run_bench(args) -> int:
    import json
    from pathlib import Path

    from maskdepth.bench_infer import BATCH_SIZES, SIZES, bench_infer, format_report, parse_size
    from maskdepth.errors import UserError
    from maskdepth.fileio import atomic_write_text

    if args.out and Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out}: already exists; pass --force to replace it or choose another --out")
    if args.model:
        from maskdepth.models import create_model

        model = create_model(args.model)
    else:
        from maskdepth.predict import load_model

        model = load_model(args.ckpt, "cpu").model
    sizes = [parse_size(s) for s in args.sizes] if args.sizes else ([(64, 64)] if args.quick else list(SIZES))
    batches = args.batch_sizes or ([1, 2] if args.quick else list(BATCH_SIZES))
    if min(batches) < 1:
        raise UserError("--batch-sizes: each must be at least 1")
    report = bench_infer(model, sizes, batches, args.device, args.backends or ("eager", "compile", "onnx"),
                         bf16=False if args.fp32 else None, warmup=1 if args.quick else 3,
                         iters=3 if args.quick else args.iters, max_s=args.max_seconds)
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(format_report(report))
    return 0
