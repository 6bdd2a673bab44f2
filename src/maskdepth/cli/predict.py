"""`maskdepth predict`, `maskdepth export` and `maskdepth bench-infer`: using a trained model."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="mask and depth for image(s) given the empty scene",
        description="Predict the foreground mask and depth of IMAGE given BG, the picture of the empty scene. "
                    "Writes mask.png (the binary mask at --threshold), mask_prob.png (8-bit probability), depth.png "
                    "(16-bit; depth.json gives unit and scale), depth_color.png, overlay.png and depth_bg.png (the "
                    "empty scene behind the foreground); with --camera also objects.json. With an image folder: one "
                    "bg file for all images (fixed camera) or a bg folder matched by file name; outputs go to "
                    "OUT/<image name>/.")
    _add_ckpt(p)
    p.add_argument("--bg", required=True, help="background picture, or a folder of them named like the images")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="picture with the foreground, or a folder of them")
    what.add_argument("--video", help="a video from the same fixed camera: writes mask.mp4, depth_color.mp4, "
                                      "overlay.mp4 and video.json, streamed frame batch by frame batch")
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--size", type=int, default=None,
                       help="run at about SIZE x SIZE pixels, aspect ratio kept (default: the training size, or the "
                            "input's own size for weights whose header says predict_native)")
    where.add_argument("--native", action="store_true",
                       help="run at the input's own size (up to about 1 megapixel; larger inputs are resampled to "
                            "that)")
    p.add_argument("--resize-bg", action="store_true", help="resample a bg whose size differs from the image's")
    add_no_align(p)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="mask.png is on where the probability is at least this, in (0, 1) (default: 0.5)")
    p.add_argument("--camera", default=None, metavar="CAMERA_JSON",
                   help="camera profile from `maskdepth calibrate`: depth in metres, objects.json per region")
    _add_device(p)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per model call (default: %(default)s)")
    p.add_argument("--depth-frames", action="store_true",
                   help="with --video: also OUT/depth/NNNNNN.png, 16-bit depth of every frame")
    p.add_argument("--alpha-webm", action="store_true",
                   help="with --video: also foreground.webm, the frames with the mask as alpha (VP9)")
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
    e.add_argument("ckpt", nargs="?", default=None,
                   help="model checkpoint (.safetensors; default: the shipped weights)")
    to = e.add_mutually_exclusive_group(required=True)
    to.add_argument("--onnx", help="output .onnx file")
    to.add_argument("--web", metavar="DIR", help="a static folder (index.html, the ONNX model, onnxruntime-web) "
                                                 "that runs the model on a webcam in the browser, offline")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    e.add_argument("--atol", type=float, default=1e-4, help="largest allowed abs difference (default: %(default)s)")
    e.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    e.add_argument("--int8", action="store_true",
                   help="with --onnx: quantise to int8 for CPU inference (calibrated on procedural scenes, "
                        "written only if it agrees with the float model)")
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
    b.add_argument("--backends", nargs="+", default=None, choices=["eager", "compile", "onnx", "onnx-int8"],
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
    p.add_argument("--ckpt", default=None, help="model checkpoint, or a file from maskdepth export --onnx (default: "
                        "the weights shipped with maskdepth)")


def add_no_align(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-align", action="store_true",
                   help="use the bg as captured; by default it is first registered onto each image (a camera "
                        "nudged by a few pixels, changed exposure or white balance)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is one)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")


def run_predict(args) -> int:
    if args.video is not None:
        import os

        # Idle OpenMP threads sleep instead of spinning, so the model's threads do not starve decoding and
        # encoding (2-4x the frames per second on 2 shared cores). Read when torch loads: set before its import.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from maskdepth.errors import UserError
    from maskdepth.predict import load_model
    from maskdepth.prediction_files import plan_outputs, predict_files

    if args.size is not None and args.size < 8:
        raise UserError(f"--size {args.size}: too small; give a side of at least 8 pixels")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if not 0 < args.threshold < 1:  # nan fails too
        raise UserError(f"--threshold {args.threshold}: give a probability strictly between 0 and 1")
    if args.video is not None:
        return _run_predict_video(args)
    if args.depth_frames or args.alpha_webm:
        raise UserError("--depth-frames and --alpha-webm go with --video; leave them out for pictures")
    # bad paths fail before the model loads
    plan = plan_outputs(args.bg, args.image, args.out, force=args.force, resume=args.resume)
    if not plan:
        print(f"nothing to do: every pair already has its outputs in {args.out}")
        return 0
    predictor = load_model(args.ckpt, args.device, size=args.size, native=args.native or None,
                           threshold=args.threshold, batch_size=args.batch_size,
                           bf16=False if args.fp32 else None, camera=args.camera,
                           align_bg=not args.no_align)
    skipped = predict_files(predictor, plan, resize_bg=args.resize_bg, skip_bad=args.skip_bad)
    where = plan[0][2] if len(plan) == 1 else f"{args.out}/<image name>/"
    print(f"wrote {len(plan) - len(skipped)} prediction(s) to {where} (depth in {predictor.depth_unit})"
          + (f"; skipped {len(skipped)} bad pair(s), listed above" if skipped else ""))
    return 0


def _run_predict_video(args) -> int:
    from maskdepth.errors import UserError
    from maskdepth.predict import load_model

    try:
        from maskdepth import video
    except ImportError:
        raise UserError("--video needs PyAV, which is not installed; pip install 'maskdepth[video]'") from None
    video.plan_video_outputs(args.out, args.depth_frames, args.alpha_webm, args.force)
    video.steady_memory()
    predictor = load_model(args.ckpt, args.device, size=args.size, native=args.native or None,
                           threshold=args.threshold, batch_size=args.batch_size,
                           bf16=False if args.fp32 else None, align_bg=not args.no_align)
    report = video.predict_video(predictor, args.bg, args.video, args.out, resize_bg=args.resize_bg,
                                 depth_frames=args.depth_frames, alpha_webm=args.alpha_webm, force=args.force)
    print(f"wrote {report.frames} frames ({report.width}x{report.height}, {report.fps:.1f} frames/s) to "
          f"{args.out}/: {', '.join(report.files)}")
    return 0


def run_export(args) -> int:
    from maskdepth.errors import UserError
    from maskdepth.export import export_checkpoint

    if args.web is not None:
        if args.int8:
            raise UserError("export --int8 goes with --onnx; the browser page runs the float model")
        from maskdepth.predict import load_model
        from maskdepth.web_export import export_web, ort_dist_dir

        ort_dist_dir()  # missing runtime files fail before the model loads
        report = export_web(load_model(args.ckpt, "cpu"), args.web, force=args.force)
        print(f"wrote {args.web}/ ({report['bytes'] / 2**20:.0f} MiB): open {args.web}/index.html in a browser; "
              "it needs no server and no network")
        return 0
    ckpt = args.ckpt
    if ckpt is None:
        from maskdepth.checkpoint import default_weights

        ckpt = default_weights("the default weights are not in this installation; give the checkpoint to export "
                               "(e.g. runs/gpu/best.safetensors)")

    if args.int8:
        import sys

        print("exporting, then calibrating int8 ranges on procedural pairs (about a minute on a CPU) ...",
              file=sys.stderr, flush=True)
    report = export_checkpoint(ckpt, args.onnx, force=args.force, opset=args.opset,
                               check=not args.no_check, atol=args.atol, int8=args.int8)
    if "int8" in report:
        q = report["int8"]
        print(f"wrote {args.onnx} (int8); against the float model on {q['pairs']} procedural pairs: mask "
              f"agreement {q['mask_agreement']:.3f}, median depth difference {q['depth_diff_median']:.2%}")
    elif report:
        h, w = report["size"]
        print(f"wrote {args.onnx}; ONNX Runtime matches PyTorch at {w}x{h}, batch {report['batch']} "
              f"(max abs diff {report['max_abs_diff']:.2g})")
    else:
        print(f"wrote {args.onnx} (not checked)")
    return 0


def run_bench(args) -> int:
    import json
    from pathlib import Path

    from maskdepth.bench_infer import BACKENDS, BATCH_SIZES, SIZES, bench_infer, format_report
    from maskdepth.errors import UserError
    from maskdepth.fileio import atomic_write_text
    from maskdepth.sizes import parse_size

    if args.out and Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out}: already exists; pass --force to replace it or choose another --out")
    if args.model:
        from maskdepth.models import create_model

        model = create_model(args.model)
    else:
        from maskdepth.predict import load_model

        model = load_model(args.ckpt, "cpu").model
    if args.sizes:
        sizes = [parse_size(s, "--sizes") for s in args.sizes]
    else:
        sizes = [(64, 64)] if args.quick else list(SIZES)
    batches = args.batch_sizes or ([1, 2] if args.quick else list(BATCH_SIZES))
    if min(batches) < 1:
        raise UserError("--batch-sizes: each must be at least 1")
    report = bench_infer(model, sizes, batches, args.device, args.backends or BACKENDS,
                         bf16=False if args.fp32 else None, warmup=1 if args.quick else 3,
                         iters=3 if args.quick else args.iters, max_s=args.max_seconds)
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(format_report(report))
    return 0
