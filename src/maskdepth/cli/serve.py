"""`maskdepth serve`: the web page for trying a model on uploads or a webcam."""

from __future__ import annotations

from maskdepth.cli.predict import add_no_align


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="a web page to try a model on uploaded pictures or a webcam",
        description="Serve a page (and a JSON API, POST /api/predict with form fields bg and image) that shows the "
                    "mask, overlay and coloured depth of a pair, from uploads or from a webcam. One model is "
                    "loaded and shared; requests queue for it. Listens on loopback unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                                                        "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--ckpt", default=None, help="model checkpoint, or a file from maskdepth export --onnx (default: "
                        "the weights shipped with maskdepth)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if there is one)")
    p.add_argument("--size", type=int, default=None,
                   help="run at about SIZE x SIZE pixels, aspect ratio kept (default: as `maskdepth predict`)")
    p.add_argument("--camera", default=None, metavar="CAMERA_JSON",
                   help="camera profile from `maskdepth calibrate`: depth in metres (a pair of another size is "
                        "refused)")
    add_no_align(p)
    p.add_argument("--max-upload-mib", type=float, default=25.0,
                   help="largest request accepted, in MiB (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest picture accepted, in pixels (default: 4096 x 4096)")
    p.add_argument("--queue", type=int, default=32,
                   help="requests that may wait for the model; more get 503 (default: %(default)s)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import os

    # Idle OpenMP threads sleep instead of spinning, leaving the cores to decoding, encoding and the event loop
    # between requests. Read when torch loads, hence set before its import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from maskdepth.errors import UserError

    try:
        import uvicorn

        from maskdepth.serve import MAX_PIXELS, create_app
    except ImportError:
        raise UserError("serve needs Starlette and uvicorn, which are not installed; "
                        "pip install 'maskdepth[serve]'") from None
    from maskdepth.predict import load_model

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port between 1 and 65535")
    predictor = load_model(args.ckpt, args.device, size=args.size, camera=args.camera, align_bg=not args.no_align)
    app = create_app(predictor, max_upload_bytes=int(args.max_upload_mib * 2**20),
                     max_pixels=args.max_pixels or MAX_PIXELS, queue=max(0, args.queue))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"maskdepth serve: http://{host}:{args.port}/ (model {predictor.model_name}; Ctrl-C stops)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None
    return 0
