"""`maskdepth data make OUT`: a procedural (or user-picture) dataset folder, seeded, parallel and resumable."""

from __future__ import annotations

import argparse
import dataclasses
import os


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def register(dsub) -> None:
    p = dsub.add_parser(
        "make", help="make a dataset: composites with exact mask and metric depth",
        description="Make a dataset folder of composites (cutouts stood on the floor of backgrounds) with exact "
                    "masks and depth. Seeded: the same options give the same bytes. Resumable: rerun the same "
                    "command after an interruption. Parallel: --workers processes on one machine, --shards a:b to "
                    "split the work over machines.",
        epilog="examples: maskdepth data make data/small\n"
               "          maskdepth data make data/seed --preset seed --workers 8\n"
               "          maskdepth data make data/seed --preset seed --shards 0:200   (machine 1 of 2)\n"
               "          maskdepth data make data/mine --bg-dir photos/ --fg-dir cutouts/\n"
               "          maskdepth data make data/mine --bg-dir photos/ --fg-dir cutouts/ --depth-teacher midas.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="dataset folder to create or resume")
    p.add_argument("--preset", choices=["seed"],
                   help="seed: the seed projects' scale, 100 backgrounds x 100 cutouts x 2 flips x 20 = 400,000 samples "
                        "at 192x192 (options given explicitly still win)")
    p.add_argument("--size", metavar="S|HxW", help="image size (default 192)")
    p.add_argument("--backgrounds", type=int, metavar="N", help="procedural rooms (default 20)")
    p.add_argument("--foregrounds", type=int, metavar="N",
                   help="procedural cutouts, each also drawn mirrored: N cutouts = 2N foreground ids (default 20)")
    p.add_argument("--per-pair", type=int, metavar="N",
                   help="placements of each (background, foreground id) pair (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bg-dir", metavar="DIR", help="your background photos instead of rooms (fitted to --size by "
                                                  "--fit; depth unknown unless --depth-teacher gives it)")
    p.add_argument("--fg-dir", metavar="DIR", help="your RGBA PNG cutouts instead of procedural ones")
    p.add_argument("--fg-kinds", metavar="K,K,...",
                   help="procedural cutouts of these kinds only (person, animal, plant, lamp, chair, table, "
                        "furniture, blob, bicycle; default all)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of backgrounds held out for the test split (default 0.1)")
    p.add_argument("--shards", metavar="A:B", help="build only global shards A..B-1 (train shards first, then test); "
                                                  "machines building disjoint ranges into copies of OUT together "
                                                  "make the whole dataset")
    p.add_argument("--workers", type=int, default=_cores(), metavar="N",
                   help=f"processes (default: the cores here, {_cores()})")
    p.add_argument("--plain", action="store_true",
                   help="paste cutouts as they are: no synthetic shadows, reflections, shading or camouflage "
                        "(for benchmarks on real pictures)")
    p.add_argument("--clutter", type=int, default=0, metavar="N",
                   help="cutouts standing in every procedural room as static clutter, in bg and fg_bg alike "
                        "(default 0: the backgrounds as they are)")
    p.add_argument("--force", action="store_true", help="replace the contents of OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_photo_arguments(p)
    p.set_defaults(func=_make)


def _add_photo_arguments(p) -> None:
    g = p.add_argument_group("your photos and a depth teacher", "see docs/your-own-data.md")
    g.add_argument("--fit", choices=["crop", "letterbox"], default="crop",
                   help="photos to --size: centre crop (default) or letterbox (black bars, never floor)")
    g.add_argument("--horizon", type=float, metavar="F",
                   help="photos: the floor is below this fraction of the height (default 0.45)")
    g.add_argument("--fg-scale", metavar="A:B",
                   help="object height between A and B of the image height (default 0.08:0.9); within it, "
                        "perspective decides")
    g.add_argument("--depth-teacher", metavar="MODEL",
                   help="monocular depth network giving the photos depth: an ONNX file, or a TorchScript file "
                        "(TorchScript is code: loading it runs it, so give only a file you trust). Settings from "
                        "MODEL.json beside it and the --teacher-* flags")
    g.add_argument("--teacher-mode", choices=["per-background", "per-composite"], default="per-background",
                   help="per-background (default): the teacher sees each photo once and composite depth follows "
                        "the composition rule; per-composite: it sees every composite (the seed projects' way)")
    g.add_argument("--teacher-size", metavar="HxW", help="the network's input size (default: the picture's)")
    g.add_argument("--teacher-input", choices=["0-1", "0-255"], help="pixel range before mean/std (default 0-1)")
    g.add_argument("--teacher-mean", metavar="R,G,B", help="normalisation mean (default ImageNet's)")
    g.add_argument("--teacher-std", metavar="R,G,B", help="normalisation std (default ImageNet's)")
    g.add_argument("--teacher-output", choices=["depth", "disparity"], help="what the network returns (default "
                                                                            "depth)")
    g.add_argument("--teacher-unit", choices=["metres", "relative"], help="metric, or depth up to scale (default "
                                                                          "relative)")
    g.add_argument("--teacher-scale", metavar="S", help="metric: metres = S x output, or S / output for "
                                                        "disparity (default 1)")
    g.add_argument("--teacher-batch", metavar="N", help="pictures per network call (default 8)")
    g.add_argument("--teacher-cache", metavar="DIR", help="cache of teacher results (default OUT/teacher-cache)")
    g.add_argument("--teacher-device", choices=["cpu", "cuda"], default="cpu",
                   help="where the teacher runs (cuda: ONNX needs onnxruntime-gpu)")


def _teacher_settings(args) -> dict:
    """TeacherSettings fields given by --teacher-* flags."""
    from maskdepth.data.teacher import FLAGS, parse_flag
    from maskdepth.errors import UserError

    values = {key: getattr(args, flag[2:].replace("-", "_")) for key, flag in FLAGS.items()}
    given = {key: parse_flag(key, text) for key, text in values.items() if text is not None}
    if given and not args.depth_teacher:
        raise UserError(f"{FLAGS[next(iter(given))]} describes a depth teacher; give the model with "
                        "--depth-teacher")
    return given


def _make(args) -> int:
    import sys

    from maskdepth.data.make import PRESETS, MakeConfig, make_dataset
    from maskdepth.errors import UserError
    from maskdepth.sizes import parse_size

    given = {"backgrounds": args.backgrounds, "foregrounds": args.foregrounds, "per_pair": args.per_pair,
             "size": parse_size(args.size) if args.size else None, "horizon": args.horizon}
    if args.bg_dir and args.backgrounds is not None:
        raise UserError("--backgrounds counts procedural rooms; with --bg-dir the photos are the backgrounds: "
                        "give one or the other")
    if args.fg_dir and args.fg_kinds:
        raise UserError("--fg-kinds chooses procedural cutouts; with --fg-dir your cutouts are the foregrounds: "
                        "give one or the other")
    if args.fg_kinds:
        given["fg_kinds"] = tuple(k.strip() for k in args.fg_kinds.split(",") if k.strip())
    if args.fg_dir and args.foregrounds is not None:
        raise UserError("--foregrounds counts procedural cutouts; with --fg-dir your cutouts are the "
                        "foregrounds: give one or the other")
    options = dict(PRESETS[args.preset]) if args.preset else {}
    options.update({k: v for k, v in given.items() if v is not None})
    from maskdepth.data.compose import ComposeConfig

    if args.fg_scale:
        from maskdepth.data.photos import parse_fraction_range

        lo, hi = parse_fraction_range(args.fg_scale)
        options["compose"] = ComposeConfig(min_height=lo, max_height=hi)
    if args.plain:
        options["compose"] = options.get("compose", ComposeConfig()).plain()
    if args.clutter:
        if args.clutter < 0:
            raise UserError(f"--clutter {args.clutter}: give the number of cutouts per background, 0 or more")
        options["compose"] = dataclasses.replace(options.get("compose", ComposeConfig()), clutter=args.clutter)
    cfg = MakeConfig(seed=args.seed, shard_size=args.shard_size, test_fraction=args.test_fraction,
                     bg_dir=args.bg_dir, fg_dir=args.fg_dir, fit=args.fit,
                     teacher=args.depth_teacher, teacher_mode=args.teacher_mode,
                     teacher_settings=_teacher_settings(args), **options)
    summary = make_dataset(args.out, cfg, shards=args.shards, workers=args.workers, force=args.force,
                           progress=not args.quiet, teacher_cache=args.teacher_cache,
                           teacher_device=args.teacher_device)
    counts = summary["metadata"]["counts"]
    print(f"{args.out}: {summary['shards_written']} shard(s), {summary['samples_written']} samples written; "
          f"{summary['shards_complete_before']} already complete; shards {summary['shards_in_range']} of "
          f"{summary['total_shards']} in range; dataset: {counts['train']} train + {counts['test']} test samples",
          file=sys.stderr)
    if cfg.teacher:
        print(f"depth teacher ({cfg.teacher_mode}): {summary['teacher_computed']} picture(s) computed, the rest "
              "from its cache", file=sys.stderr)
    return 0
