"""`maskdepth data import`: seed-layout folders or zips of bg / fg_bg / mask / depth pictures -> a dataset folder.

Which files make a sample is decided in data/import_match.py (folder and file names, or a CSV manifest); this
module decodes, fits and writes them in the dataset format (data/format.py).

Depth in 8-bit files is "relative": value/255, stored as 16-bit with scale 1/65535 (so 0 stays 'unknown').
16-bit depth is relative too unless --depth-unit metres --depth-scale S says what one step is. Every file is
decoded before it is accepted; what cannot be read, matched or fitted is skipped and listed in the printed
summary and in OUT/import_report.json: one bad file never stops the import.
"""

from __future__ import annotations

import io
import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskdepth.codecs import encode_depth_png, encode_jpeg, encode_png
from maskdepth.data.format import (
    DATASET_OUTPUT,
    RELATIVE_DEPTH_SCALE,
    DatasetMetadata,
    background_files,
    held_out,
    round_depth_max,
    shard_name,
)
from maskdepth.data.import_match import Item, Source, match_files, read_manifest
from maskdepth.data.shards import write_shard
from maskdepth.errors import UserError
from maskdepth.fileio import (
    MAX_IMAGE_PIXELS,
    atomic_write_bytes,
    atomic_write_text,
    prepare_output_dir,
)
from maskdepth.progress import Progress

REPORT = "import_report.json"
DEPTH_UNITS = ("relative", "metres")


# ---------------------------------------------------------------------------------------------------- decoding


class _Skip(Exception):
    """A sample that cannot be imported: (file, problem)."""

    def __init__(self, file: str, problem: str):
        super().__init__(problem)
        self.file, self.problem = file, problem


def _open(source: Source, name: str):
    """(decoded Pillow image, original bytes) of a source file, or _Skip saying why not."""
    label = source.label(name)
    try:
        data = source.read(name)
    except FileNotFoundError:
        raise _Skip(label, "file not found") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip member raises several kinds; all mean "unreadable"
        raise _Skip(label, f"cannot be read ({type(e).__name__}: {e})") from None
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:  # checked on the header, before decoding
            raise _Skip(label, f"{img.width}x{img.height} is over the {MAX_IMAGE_PIXELS:,}-pixel limit")
        img.load()
    except _Skip:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise _Skip(label, f"damaged or not a picture ({type(e).__name__}: {e})") from None
    return img, data


def _gray8(img) -> np.ndarray:
    """(H,W) uint8 of a mask-like picture: 16-bit scaled down; an alpha channel if that is where the mask is."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return (np.asarray(img).astype(np.uint32) // 257).clip(0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        gray = np.asarray(img.convert("L"))
        if gray.min() == gray.max() and rgba[..., 3].min() != rgba[..., 3].max():
            return rgba[..., 3].copy()
        return gray
    return np.asarray(img.convert("L"))


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if a.shape[:2] == size:
        return a
    img = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _fit(img_size: tuple[int, int], size: tuple[int, int], resize: bool, label: str) -> None:
    if not resize and img_size != size:
        raise _Skip(label, f"is {img_size[1]}x{img_size[0]}, the dataset is {size[1]}x{size[0]}; pass --size to "
                           "resize everything")


def _depth16(img, unit: str, label: str) -> np.ndarray:
    """(H,W) uint16 stored depth values: 8-bit v -> v*257 (relative), 16-bit as they are."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img)
        if a.max(initial=0) > 65535 or a.min(initial=0) < 0:
            raise _Skip(label, "depth values outside 0..65535; save depth as a 16-bit PNG")
        return a.astype(np.uint16)
    if img.mode == "F":
        raise _Skip(label, "floating-point depth is not supported; save it as a 16-bit PNG")
    if unit != "relative":
        raise _Skip(label, f"8-bit depth cannot hold {unit}; import 8-bit depth as relative (drop --depth-unit)")
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        spread = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max(axis=2)
        if (spread > 24).mean() > 0.01:
            raise _Skip(label, "depth is a colour picture (a colour map?); give grayscale depth")
    return _gray8(img).astype(np.uint16) * 257


@dataclass
class _Job:
    """One shard to write: samples (key, item, bg id) and how to convert them."""

    path: Path
    samples: list[tuple[str, Item, int]]
    size: tuple[int, int]
    resize: bool
    unit: str
    quality: int


@dataclass
class _Done:
    path: Path
    count: int
    problems: list[dict[str, str]] = field(default_factory=list)
    depth_max: int = 0


def _convert(source: Source, key: str, item: Item, bg_id: int, job: _Job) -> tuple[dict[str, bytes], int]:
    image, raw = _open(source, item.fg_bg)
    _fit((image.height, image.width), job.size, job.resize, source.label(item.fg_bg))
    if image.format == "JPEG" and image.mode == "RGB" and (image.height, image.width) == job.size:
        fg_bg = raw  # stored as it came: no second JPEG loss
    else:
        fg_bg = encode_jpeg(_resize(np.asarray(image.convert("RGB")), job.size, nearest=False), job.quality)
    mask_img, _ = _open(source, item.mask)
    _fit((mask_img.height, mask_img.width), job.size, job.resize, source.label(item.mask))
    mask = _resize(_gray8(mask_img), job.size, nearest=False)
    depth_img, _ = _open(source, item.depth)
    _fit((depth_img.height, depth_img.width), job.size, job.resize, source.label(item.depth))
    depth = _resize(_depth16(depth_img, job.unit, source.label(item.depth)), job.size, nearest=True)
    meta = {"bg": bg_id, "source": {"fg_bg": item.fg_bg, "mask": item.mask, "depth": item.depth, "bg": item.bg}}
    return ({"fg_bg.jpg": fg_bg, "mask.png": encode_png(mask), "depth.png": encode_png(depth),
             "json": json.dumps(meta, sort_keys=True).encode()}, int(depth.max(initial=0)))


def _write_shard(source: Source, job: _Job, on_sample=None) -> _Done:
    done = _Done(job.path, 0)

    def samples():
        for key, item, bg_id in job.samples:
            try:
                members, dmax = _convert(source, key, item, bg_id, job)
            except _Skip as e:
                done.problems.append({"file": e.file, "problem": e.problem})
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the import
                done.problems.append({"file": source.label(item.fg_bg), "problem": f"{type(e).__name__}: {e}"})
            else:
                done.depth_max = max(done.depth_max, dmax)
                yield key, members
            if on_sample:
                on_sample()

    done.count = write_shard(job.path, samples())
    if done.count == 0:
        job.path.unlink()
    return done


_SOURCE: Source | None = None


def _pool_init(source: Source) -> None:
    global _SOURCE
    _SOURCE = source


def _pool_write(job: _Job) -> _Done:
    assert _SOURCE is not None
    return _write_shard(_SOURCE, job)


# ---------------------------------------------------------------------------------------------------- import


def _prepare_out(out: Path, src: Path, force: bool) -> Path:
    o, s = out.resolve(), src.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise UserError(f"{out}: the output folder must be outside the source {src} (and not contain it)")
    return prepare_output_dir(out, DATASET_OUTPUT, force=force)


def import_dataset(src: str | os.PathLike, out: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                   size: tuple[int, int] | None = None, depth_unit: str = "relative",
                   depth_scale: float | None = None, test_fraction: float = 0.1, seed: int = 0,
                   shard_size: int = 1000, quality: int = 95, workers: int = 1, force: bool = False,
                   command: str = "", progress: bool = True) -> dict[str, Any]:
    """Import a seed-layout folder or zip `src` into the dataset folder `out`; returns the report (also written
    to out/import_report.json)."""
    if depth_unit not in DEPTH_UNITS:
        raise UserError(f"unknown depth unit '{depth_unit}'; use one of {', '.join(DEPTH_UNITS)}")
    if depth_unit == "metres" and not (depth_scale and depth_scale > 0):
        raise UserError("--depth-unit metres needs --depth-scale S: the metres of one 16-bit depth step "
                        "(e.g. 0.001 for millimetres)")
    if depth_unit == "relative" and depth_scale is not None:
        raise UserError("--depth-scale goes with --depth-unit metres; relative depth is always value/65535")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1) (got {test_fraction})")
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    source = Source(src)
    problems: list[dict[str, str]] = []
    ignored = 0
    if manifest is not None:
        items = read_manifest(manifest, source)
    else:
        items, problems, ignored = match_files(source.names())
        problems = [{"file": source.label(p["file"]), "problem": p["problem"]} for p in problems]
    if not items:
        raise UserError(f"{src}: no complete sample (fg_bg + mask + depth + bg) found; "
                        + (f"first problem: {problems[0]['file']}: {problems[0]['problem']}" if problems else
                           "check the folder names"))
    out = _prepare_out(Path(out), source.path, force)

    # backgrounds first: decoded once, written once; a sample whose bg is unreadable is skipped
    resize = size is not None
    if size is None:
        first = _open_first(source, items)
        size = (first.height, first.width)
    bg_names = sorted({it.bg for it in items})
    bg_ids: dict[str, int] = {}
    bg_problem: dict[str, str] = {}
    for name in bg_names:
        try:
            img, _ = _open(source, name)
            _fit((img.height, img.width), size, resize, source.label(name))
        except _Skip as e:
            bg_problem[name] = f"its background {e.file} {e.problem}"
            problems.append({"file": e.file, "problem": e.problem})
            continue
        bg_id = len(bg_ids)
        rgb_p, depth_p, _ = background_files(out, bg_id)
        atomic_write_bytes(rgb_p, encode_png(_resize(np.asarray(img.convert("RGB")), size, nearest=False)))
        atomic_write_bytes(depth_p, encode_depth_png(np.zeros(size, np.float32), 1.0))  # depth unknown
        bg_ids[name] = bg_id
    usable = []
    for it in items:
        if it.bg in bg_problem:
            problems.append({"file": source.label(it.fg_bg), "problem": bg_problem[it.bg]})
        else:
            usable.append(it)

    # split (by background when there are several), shuffle within each split, cut into shards
    rng = random.Random(seed)
    by_bg = len({it.bg for it in usable}) > 1
    groups = [it.bg if by_bg else i for i, it in enumerate(usable)]  # what the split keeps together
    test_groups = set(held_out(sorted(set(groups)), test_fraction, rng.sample))
    splits: dict[str, list[tuple[str, Item, int]]] = {"train": [], "test": []}
    for i, (it, g) in enumerate(zip(usable, groups)):
        splits["test" if g in test_groups else "train"].append((f"{i:08d}", it, bg_ids[it.bg]))
    jobs = []
    for split, samples in splits.items():
        rng.shuffle(samples)
        for k in range(0, len(samples), shard_size):
            jobs.append((split, _Job(out / "shards" / shard_name(split, k // shard_size),
                                     samples[k:k + shard_size], size, resize, depth_unit, quality)))
    (out / "shards").mkdir(parents=True, exist_ok=True)

    done: list[tuple[str, _Done]] = []
    with Progress(len(usable), "import", unit="sample", enabled=progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for split, job in jobs:
                done.append((split, _write_shard(source, job, on_sample=lambda: bar.update(1))))
        else:
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"),
                                     initializer=_pool_init, initargs=(source,)) as pool:
                for (split, job), d in zip(jobs, pool.map(_pool_write, [j for _, j in jobs])):
                    done.append((split, d))
                    bar.update(len(job.samples))

    names: dict[str, list[str]] = {"train": [], "test": []}
    counts: dict[str, list[int]] = {"train": [], "test": []}
    for split, d in done:
        problems += d.problems
        if d.count:  # shards are renumbered if one ended up empty
            name = shard_name(split, len(names[split]))
            if d.path.name != name:
                d.path.rename(out / "shards" / name)
            names[split].append(name)
            counts[split].append(d.count)
    n = {s: sum(c) for s, c in counts.items()}
    if n["train"] + n["test"] == 0:
        raise UserError(f"{src}: none of the {len(items)} samples could be imported; first problem: "
                        f"{problems[0]['file']}: {problems[0]['problem']}")
    raw_max = max((d.depth_max for _, d in done), default=0)
    scale = depth_scale if depth_unit == "metres" else RELATIVE_DEPTH_SCALE
    meta = DatasetMetadata.new(
        generator="maskdepth data import", source="import", size=size,
        depth={"unit": depth_unit, "scale": scale,
               "max": 1.0 if depth_unit == "relative" else round_depth_max(max(raw_max, 1) * scale)},
        counts={"train": n["train"], "test": n["test"], "backgrounds": len(bg_ids), "skipped": len(problems)},
        split={"by": "background" if by_bg else "sample", "test_fraction": test_fraction, "seed": seed},
        shards=names, shard_counts=counts, command=command,
        **{"import": {"src": str(src), "manifest": str(manifest) if manifest else None, "seed": seed,
                      "test_fraction": test_fraction, "shard_size": shard_size, "jpeg_quality": quality,
                      "resized": resize}})
    report = {"src": str(src), "out": str(out), "imported": n, "backgrounds": len(bg_ids),
              "skipped": problems, "ignored_files": ignored}
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    meta.write(out)  # last: a folder with metadata.json is a complete dataset
    return report


def _open_first(source: Source, items: list[Item]):
    """The first readable fg_bg picture (its size is the dataset's when --size is not given)."""
    for it in items:
        try:
            return _open(source, it.fg_bg)[0]
        except _Skip:
            continue
    raise UserError(f"{source.path}: none of the fg_bg pictures can be read; check the files")


def summary(report: dict[str, Any], show: int = 10) -> str:
    """A few lines for the terminal."""
    n = report["imported"]
    lines = [f"imported {n['train'] + n['test']} samples (train {n['train']}, test {n['test']}) with "
             f"{report['backgrounds']} backgrounds into {report['out']}"]
    skipped = report["skipped"]
    if skipped:
        lines.append(f"skipped {len(skipped)} (all listed in {Path(report['out']) / REPORT}):")
        lines += [f"  {p['file']}: {p['problem']}" for p in skipped[:show]]
        if len(skipped) > show:
            lines.append(f"  ... and {len(skipped) - show} more")
    if report["ignored_files"]:
        lines.append(f"ignored {report['ignored_files']} files that are not bg / fg_bg / mask / depth pictures")
    return "\n".join(lines)
