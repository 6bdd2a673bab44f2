"""Real-photo benchmark: the model beside the differencing baseline on composites of real photos, under fixed,
seeded capture conditions (aligned, shifted, exposure, jpeg: see src/maskdepth/realbench.py). Writes
benchmarks/results/real_photos.json.

    python benchmarks/real_photos.py                                  # ../shared/realsets/fg_bg_dataset
    python benchmarks/real_photos.py --bg-dir photos/ --fg-dir cutouts/ --ckpt runs/x/best.safetensors
    python benchmarks/real_photos.py --size 96                        # predict at a working size of 96x96
    python benchmarks/real_photos.py --pictures worst/                # and a picture of its 8 worst per condition

Composites come from the project's own path, `maskdepth data make --bg-dir --fg-dir --plain` (masks from the
cutouts' alpha, no depth, cutouts pasted as they are): a seeded subset of `--backgrounds` photos x `--cutouts` cutouts x 2 flips, one placement each.
Without --size / --native the model runs with `predict`'s default settings, as a user would get.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskdepth import __version__
from maskdepth.cli import main as cli_main
from maskdepth.data.photos import IMAGE_SUFFIXES
from maskdepth.errors import UserError
from maskdepth.predict import load_model
from maskdepth.realbench import CONDITIONS, WorstCases, load_pairs, score_condition
from maskdepth.viz import save_png

ROOT = Path(__file__).resolve().parent
REALSET = ROOT.parent.parent / "shared" / "realsets" / "fg_bg_dataset"


def _subset(folder: Path, n: int | None, seed: int, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; give --bg-dir and --fg-dir")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise UserError(f"{folder}: no pictures ({', '.join(suffixes)}) in this folder; check the path")
    if n is None or n >= len(files):
        return files
    return sorted(random.Random(seed).sample(files, n))


def make_pairs_dataset(bg_dir: Path, fg_dir: Path, work: Path, *, size: int, backgrounds: int | None,
                       cutouts: int | None, fg_scale: str, seed: int, workers: int) -> Path:
    """Compose the seeded subset with `maskdepth data make --bg-dir --fg-dir` into `work`/data (a rerun of the
    same command finds it complete)."""
    picks = {"bg": _subset(bg_dir, backgrounds, seed, IMAGE_SUFFIXES),
             "fg": _subset(fg_dir, cutouts, seed + 1, (".png",))}
    for name, files in picks.items():
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (folder / f.name).exists():
                (folder / f.name).symlink_to(f.resolve())
    data = work / "data"
    argv = ["data", "make", str(data), "--bg-dir", str(work / "bg"), "--fg-dir", str(work / "fg"),
            "--size", str(size), "--per-pair", "1", "--test-fraction", "0", "--fg-scale", fg_scale,
            "--seed", str(seed), "--workers", str(workers), "--plain", "--quiet"]
    if cli_main(argv) != 0:
        raise UserError(f"{data}: data make failed (see above); remove the folder and rerun")
    return data


def _shown(folder: Path) -> str:
    """The folder as the report shows it: the real-photo set relative to the repository, others as given."""
    try:
        return "../" + str(folder.resolve().relative_to(REALSET.parents[2].resolve()))
    except ValueError:
        return str(folder)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bg-dir", type=Path, default=REALSET / "bg", help="background photos (default: %(default)s)")
    p.add_argument("--fg-dir", type=Path, default=REALSET / "fg", help="RGBA PNG cutouts (default: %(default)s)")
    p.add_argument("--backgrounds", type=int, default=30, help="photos drawn (default %(default)s)")
    p.add_argument("--cutouts", type=int, default=15, help="cutouts drawn, each also mirrored (default %(default)s)")
    p.add_argument("--data-size", type=int, default=192, help="composite side (default %(default)s)")
    p.add_argument("--fg-scale", default="0.35:0.75", help="object height range, fraction of the frame")
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default weights)")
    p.add_argument("--size", type=int, default=None, help="predict's working size (default: predict's default)")
    p.add_argument("--native", action="store_true", help="run at the composite's own size")
    p.add_argument("--no-align", action="store_true", help="predict with the bg as captured (align_bg=False)")
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for the composites (default: a temporary one)")
    p.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    p.add_argument("--pictures", type=Path, default=None,
                   help="folder for worst-<condition>.png: the 8 composites the model does worst on")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "real_photos.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            data = make_pairs_dataset(args.bg_dir, args.fg_dir, work, size=args.data_size,
                                      backgrounds=args.backgrounds, cutouts=args.cutouts, fg_scale=args.fg_scale,
                                      seed=args.seed, workers=2)
            pairs = load_pairs(data)
            options = {"native": True} if args.native else ({"size": args.size} if args.size else {})
            options["align_bg"] = not args.no_align
            predictor = load_model(args.ckpt, "cpu", **options)
            if args.pictures:  # a bad path fails now, not after the scoring
                try:
                    args.pictures.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise UserError(f"{args.pictures}: cannot hold the pictures ({e.strerror}); give another "
                                    "--pictures folder") from None
            results, t0 = {}, time.perf_counter()
            for cond in args.conditions:
                worst = WorstCases() if args.pictures else None
                results[cond] = score_condition(predictor, pairs, cond, seed=args.seed, worst=worst)
                if worst is not None:
                    save_png(args.pictures / f"worst-{cond}.png", worst.picture())
                m, b = results[cond]["model"], results[cond]["baseline"]
                reg = results[cond]["baseline_registered"]
                print(f"{cond:9s} model IoU {m['mask_iou']:.3f} (per image {m['mask_iou_per_image']:.3f}, "
                      f"boundary F {m['mask_boundary_f']:.3f})   differencing IoU {b['mask_iou']:.3f} "
                      f"(per image {b['mask_iou_per_image']:.3f}, boundary F {b['mask_boundary_f']:.3f}, "
                      f"t={b['threshold']})   margin {results[cond]['margin_iou']:+.3f}   registered differencing "
                      f"IoU {reg['mask_iou']:.3f}", flush=True)
                print(f"{'':9s} recall: same brightness as behind {m['recall_same_brightness']:.3f} (differencing "
                      f"{b['recall_same_brightness']:.3f}), dark on brighter {m['recall_dark_on_brighter']:.3f} "
                      f"({b['recall_dark_on_brighter']:.3f})", flush=True)
    except UserError as e:
        print(f"real_photos: error: {e}", file=sys.stderr)
        return 2
    h, w = pairs[0].image.shape[:2]
    report = {
        "benchmark": "real_photos", "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "maskdepth": __version__, "ckpt": args.ckpt or "default weights", "align_bg": not args.no_align,
        "model": predictor.model_name, "work_size": list(predictor.work_size(h, w)),
        "data": {"bg_dir": _shown(args.bg_dir), "fg_dir": _shown(args.fg_dir), "backgrounds": args.backgrounds,
                 "cutouts": args.cutouts, "size": args.data_size, "fg_scale": args.fg_scale, "seed": args.seed,
                 "samples": len(pairs)},
        "seconds": round(time.perf_counter() - t0, 1), "conditions": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
