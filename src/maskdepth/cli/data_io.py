"""`maskdepth data import | show | stats`: arguments here, the work in maskdepth.data.importer / .inspect."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def register(dsub) -> None:
    p = dsub.add_parser(
        "import", help="import seed-layout folders or zips (bg, fg_bg, mask, depth) as a dataset",
        description="Import a folder or .zip of seed-layout pictures into a dataset folder. Files are matched by "
                    "name (bg/, fg_bg/, mask/, depth/ folders; mask and depth share the fg_bg file's name, maybe "
                    "with a prefix such as mask_ or depth_; a bg's name starts or is part of the fg_bg name) or "
                    "by a CSV manifest. Unreadable or unmatched files are skipped and listed in "
                    "OUT/import_report.json.")
    p.add_argument("src", metavar="SRC", help="folder or .zip with the pictures")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument("--manifest", metavar="CSV", help="CSV with columns bg, fg_bg, mask, depth (paths relative to "
                                                     "SRC) instead of matching by name")
    p.add_argument("--size", metavar="N|HxW",
                   help="resize everything to this size (default: keep the pictures' own size, which must agree)")
    p.add_argument("--depth-unit", choices=("relative", "metres"), default="relative",
                   help="unit of the depth files: relative (8- or 16-bit, default) or metres (16-bit only, with "
                        "--depth-scale)")
    p.add_argument("--depth-scale", type=float, metavar="S",
                   help="metres per 16-bit depth step (with --depth-unit metres), e.g. 0.001")
    p.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="share held out as the test split: whole backgrounds when there are several (default 0.1)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and shuffle (default 0)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--jpeg-quality", type=int, default=95, metavar="Q",
                   help="quality of re-encoded fg_bg JPEGs (JPEGs at the right size are kept as they are)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N", help="processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace what OUT holds")
    p.set_defaults(func=_import)

    p = dsub.add_parser("show", help="write a picture grid of samples (bg, fg_bg, mask, depth)",
                        description="Write a PNG grid of random samples of a dataset: bg, fg_bg, mask and "
                                    "coloured depth (near red, far blue, unknown black).")
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--n", type=int, default=16, metavar="N", help="samples to show (default 16)")
    p.add_argument("--out", metavar="FILE.png", help="picture to write (default: DIR's name-SPLIT.png here)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="which samples (default 0)")
    p.add_argument("--tile", type=int, default=160, metavar="PX", help="largest tile side in pixels (default 160)")
    p.add_argument("--capture", action="store_true",
                   help="show bg and fg_bg as training sees them: the default camera response on both (light "
                        "gradient, vignette, clipping, blur, noise, JPEG), then bg re-captured (camera nudge, "
                        "colour, noise, JPEG)")
    p.add_argument("--force", action="store_true", help="overwrite FILE.png if it exists")
    p.set_defaults(func=_show)

    p = dsub.add_parser("stats", help="counts, colour statistics, depth range and mask coverage",
                        description="Counts of a dataset and, over a sample of it, per-channel mean/std of "
                                    "fg_bg and bg, depth range and mean, mask coverage.")
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--max-samples", type=int, default=2000, metavar="N", help="samples to read at most (default 2000)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="which samples when there are more (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_stats)


def _import(args) -> int:
    from maskdepth.data.importer import import_dataset, summary
    from maskdepth.sizes import parse_size

    size = parse_size(args.size, minimum=8) if args.size else None
    report = import_dataset(args.src, args.out, manifest=args.manifest, size=size,
                            depth_unit=args.depth_unit, depth_scale=args.depth_scale,
                            test_fraction=args.test_fraction, seed=args.seed, shard_size=args.shard_size,
                            quality=args.jpeg_quality, workers=args.workers, force=args.force,
                            command=shlex.join(["maskdepth", *sys.argv[1:]]))
    print(summary(report))
    return 0


def _show(args) -> int:
    from maskdepth.data.capture import CaptureConfig
    from maskdepth.data.inspect import show_grid
    from maskdepth.errors import UserError
    from maskdepth.viz import save_png

    out = Path(args.out or f"{Path(args.dir).resolve().name}-{args.split}.png")
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists; choose another --out or pass --force to overwrite it")
    grid = show_grid(args.dir, args.split, args.n, args.seed, args.tile,
                     capture=CaptureConfig() if args.capture else None)
    save_png(out, grid)
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


def _stats(args) -> int:
    import json

    from maskdepth.data.inspect import dataset_stats, format_stats

    st = dataset_stats(args.dir, args.split, args.max_samples, args.seed, progress=not args.json)
    print(json.dumps(st, indent=2) if args.json else format_stats(st))
    return 0
