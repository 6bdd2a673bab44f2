"""`maskdepth data make`: a dataset folder of composites with exact ground truth, seeded, parallel and resumable.

What is made is a pure function of the `MakeConfig` (and the user's pictures, if any):
- backgrounds (procedural room k depends on (seed, k)) and cutouts (likewise), stored once;
- the split: a seeded choice of held-out backgrounds (test);
- per split, every (background, cutout, flip) triple `per_pair` times, in a seeded global order, cut into shards
  of `shard_size`; shard i's placements come from a generator seeded by (seed, i).
So shard i depends only on (seed, i): a machine can build any `--shards a:b` range, N machines together build the
one-machine dataset, and a rerun skips complete shards (a shard file exists only once complete).

metadata.json is written before anything else and holds only deterministic content (no paths, times or worker
counts), so every machine and every rerun writes the same file; a folder whose metadata differs is refused.

The command is in three modules: make_plan.py (the config and which samples each shard holds), make_render.py
(building one shard, in a worker) and this one (the assets, the metadata, the workers and the folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.codecs import encode_depth_png, encode_png
from maskdepth.data import photos
from maskdepth.data.banks import (
    CUTOUT_SIZE,
    PROCEDURAL_VERSION,
    nominal_ground,
    procedural_background,
    procedural_foreground,
)
from maskdepth.data.clutter import furnish_backgrounds
from maskdepth.data.compose import recorded_compose
from maskdepth.data.format import (
    DATASET_OUTPUT,
    DEPTH_SCALE,
    MAKE_LOCK,
    METADATA,
    RELATIVE_DEPTH_SCALE,
    SPLITS,
    TEACHER_CACHE,
    DatasetMetadata,
    background_files,
    cutout_file,
    round_depth_max,
    shard_name,
)
from maskdepth.data.make_plan import (
    JPEG_QUALITY,
    PRESETS,
    MakeConfig,
    ShardPlan,
    command_line,
    held_out_backgrounds,
    parse_shards,
)
from maskdepth.data.make_render import build_task, clear_caches, init_worker, remove_temps_of
from maskdepth.data.rooms import MAX_DEPTH_M
from maskdepth.data.teacher import DepthTeacher
from maskdepth.errors import UserError
from maskdepth.fileio import (
    atomic_write_bytes,
    folder_lock,
    prepare_output_dir,
    remove_owned,
)
from maskdepth.progress import Progress

__all__ = ["PRESETS", "MakeConfig", "ShardPlan", "make_dataset"]  # the command's public face
GENERATOR_NAME = "maskdepth.data.make"


# ---------------------------------------------------------------------------------------------------------------
# the assets


@dataclass
class Assets:
    backgrounds: list  # of rooms.Background
    cutouts: list  # of cutouts.Cutout
    sources: list[str]  # per background: "procedural" or the photo's name
    skipped: list  # photos.Skipped: the user's pictures that could not be used


def _procedural_bg(args: tuple[int, int, tuple[int, int]]):
    return procedural_background(*args)


def _procedural_fg(args: tuple[int, int, int, tuple[str, ...] | None]):
    return procedural_foreground(*args)


def load_assets(cfg: MakeConfig, pool=None, teacher=None, progress: bool = True) -> Assets:
    """Backgrounds and cutouts; photos get `teacher`'s depth (once per photo) if given."""
    run = pool.map if pool is not None else map
    skipped: list = []
    if cfg.bg_dir:
        found, bad = photos.load_background_photos(cfg.bg_dir, cfg.size, fit=cfg.fit, horizon=cfg.horizon)
        if teacher is not None:
            found = photos.add_teacher_depth(found, teacher, cfg.horizon, progress=progress)
        backgrounds, sources = [ph.background for ph in found], [ph.name for ph in found]
        skipped += bad
    else:
        backgrounds = list(run(_procedural_bg, [(cfg.seed, i, cfg.size) for i in range(cfg.backgrounds)]))
        sources = ["procedural"] * len(backgrounds)
    if cfg.fg_dir:
        cutouts, bad = photos.load_cutout_photos(cfg.fg_dir, max_side=max(cfg.size))
        skipped += bad
    else:
        cutouts = list(run(_procedural_fg, [(cfg.seed, i, CUTOUT_SIZE, cfg.fg_kinds)
                                            for i in range(cfg.foregrounds)]))
    # the same furnished rooms the on-the-fly generator builds from these assets and seed
    backgrounds = furnish_backgrounds(backgrounds, cutouts, cfg.compose.clutter, cfg.seed, cfg.compose)
    return Assets(backgrounds, cutouts, sources, skipped)


def build_metadata(cfg: MakeConfig, assets: Assets, plan: ShardPlan, teacher=None) -> DatasetMetadata:
    known = [float(b.depth.max()) for b in assets.backgrounds if (b.depth > 0).any()]
    if teacher is not None and teacher.unit == "relative":
        depth = {"unit": "relative", "scale": RELATIVE_DEPTH_SCALE, "max": 1.0}
    elif not cfg.bg_dir:  # procedural rooms: the generator's bound, the same for every procedural dataset
        depth = {"unit": "metres", "scale": DEPTH_SCALE, "max": round_depth_max(MAX_DEPTH_M)}
    elif known:
        depth = {"unit": "metres", "scale": DEPTH_SCALE, "max": round_depth_max(max(known))}
    else:  # photos without depth: nothing is known; bound by the nominal floor the objects stand on
        d, floor, _ = nominal_ground(cfg.size)
        depth = {"unit": "metres", "scale": DEPTH_SCALE, "max": round_depth_max(float(d[floor].max()))}
    counts = {"backgrounds": len(assets.backgrounds), "cutouts": len(assets.cutouts),
              "foregrounds": 2 * len(assets.cutouts)}
    counts.update({s: plan.split_samples(s) for s in SPLITS})
    extra: dict[str, Any] = {
        "seed": cfg.seed, "per_pair": cfg.per_pair, "shard_size": cfg.shard_size,
        "compose": dataclasses.asdict(cfg.compose),
        "jpeg_quality": JPEG_QUALITY, "cutout_size": CUTOUT_SIZE,
        "backgrounds": [{"focal_px": float(b.focal_px), "source": src}
                        for b, src in zip(assets.backgrounds, assets.sources)],
        "cutouts": [{"name": c.name, "height_m": float(c.height_m)} for c in assets.cutouts],
    }
    if cfg.bg_dir:
        extra["photos"] = {"fit": cfg.fit, "horizon": cfg.horizon}
    if not (cfg.bg_dir and cfg.fg_dir):  # procedural rooms or cutouts: their drawing's version
        extra["procedural_version"] = PROCEDURAL_VERSION
    if cfg.fg_kinds and not cfg.fg_dir:
        extra["fg_kinds"] = list(cfg.fg_kinds)
    if teacher is not None:
        extra["teacher"] = {"mode": cfg.teacher_mode, **teacher.describe()}
    return DatasetMetadata.new(
        generator=GENERATOR_NAME, source="photos" if cfg.bg_dir else "procedural", size=cfg.size, depth=depth,
        counts=counts,
        split={"by": "background", "test_fraction": cfg.test_fraction,
               "test_backgrounds": list(plan.split_backgrounds["test"])},
        shards={s: [shard_name(s, j) for j in range(plan.split_shards(s))] for s in SPLITS},
        shard_counts={s: [plan.shard_count(s, j) for j in range(plan.split_shards(s))] for s in SPLITS},
        command=command_line(cfg), **extra)


def comparable(meta: DatasetMetadata) -> dict[str, Any]:
    """The metadata as resuming compares it: a [compose] recorded before a field existed has that field's
    default, which composes as before."""
    d = dict(meta)
    if isinstance(d.get("compose"), dict):
        d["compose"] = recorded_compose(d["compose"])
    return d


def write_assets(root: Path, assets: Assets, depth_scale: float = DEPTH_SCALE) -> None:
    """Backgrounds (RGB, 16-bit depth, floor) and cutouts (RGBA), each file skipped if already there."""
    def put(path: Path, make) -> None:
        if not path.exists():
            remove_temps_of(path)
            atomic_write_bytes(path, make())

    for i, b in enumerate(assets.backgrounds):
        rgb_p, depth_p, floor_p = background_files(root, i)
        put(rgb_p, lambda b=b: encode_png(b.image))
        put(depth_p, lambda b=b: encode_depth_png(b.depth, depth_scale))
        put(floor_p, lambda b=b: encode_png(b.floor.astype(np.uint8) * 255))
    for i, c in enumerate(assets.cutouts):
        put(cutout_file(root, i), lambda c=c: encode_png(c.rgba))


# ---------------------------------------------------------------------------------------------------------------
# the whole command


def make_dataset(out: str | os.PathLike, cfg: MakeConfig, shards: str | None = None, workers: int = 1,
                 force: bool = False, progress: bool = True, teacher_cache: str | os.PathLike | None = None,
                 teacher_device: str = "cpu") -> dict[str, Any]:
    """Build (or resume) the dataset `cfg` in `out`; only the global shard range `shards` ('a:b') if given.
    A depth teacher caches its results in `teacher_cache` (default OUT/teacher-cache) and runs on
    `teacher_device`. Returns a summary: shards and samples written, shards already complete, pictures the
    teacher computed (cache misses), the metadata."""
    cfg.check()
    out = Path(out)
    # a folder of our own is resumed; anything else non-empty is refused, --force or not
    prepare_output_dir(out, DATASET_OUTPUT, resume=True, inputs=[cfg.bg_dir, cfg.fg_dir, cfg.teacher])
    with folder_lock(out / MAKE_LOCK, "`maskdepth data make`"):
        if force:  # our own earlier dataset's files are replaced; the teacher cache (by content) stays
            remove_owned(out, DATASET_OUTPUT, keep=(MAKE_LOCK,))
        return _make_locked(out, cfg, shards, workers, progress, teacher_cache, teacher_device)


def _make_locked(out: Path, cfg: MakeConfig, shards: str | None, workers: int, progress: bool,
                 teacher_cache: str | os.PathLike | None, teacher_device: str) -> dict[str, Any]:
    cache = Path(teacher_cache) if teacher_cache is not None else out / TEACHER_CACHE
    workers = max(1, int(workers))
    # fork: workers start at once with everything imported (make never touches CUDA, which fork would upset)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ctx.Pool(workers, initializer=init_worker) if workers > 1 else None
    threads = torch.get_num_threads()
    ok = False
    try:
        if pool is None:
            torch.set_num_threads(1)  # the same arithmetic as a worker's, so the bytes do not depend on --workers
        teacher = None
        if cfg.teacher:
            teacher = DepthTeacher.from_path(cfg.teacher, device=teacher_device, threads=1, cache_dir=cache,
                                             **cfg.teacher_settings)
        assets = load_assets(cfg, pool, teacher, progress)
        test = held_out_backgrounds(cfg.seed, len(assets.backgrounds), cfg.test_fraction)
        plan = ShardPlan(str(out), cfg, len(assets.cutouts), {
            "train": tuple(i for i in range(len(assets.backgrounds)) if i not in test), "test": tuple(test)})
        meta = build_metadata(cfg, assets, plan, teacher)
        plan = dataclasses.replace(plan, digest=hashlib.sha256(json.dumps(meta.json, sort_keys=True).encode()).hexdigest(),
                                   depth_scale=meta.depth_scale, depth_max=meta.depth_max,
                                   teacher_cache=str(cache), teacher_device=teacher_device)
        if (out / METADATA).exists():
            old, new = comparable(DatasetMetadata.read(out)), comparable(meta)
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise UserError(f"{out}: holds a different maskdepth dataset (differs in {', '.join(diff)}); "
                                "choose another folder, rerun with its own options, or pass --force to replace it")
        else:
            remove_temps_of(out / METADATA)
            meta.write(out)
        if assets.skipped:
            photos.write_skip_report(out / "skipped.json", assets.skipped)
            print(f"maskdepth: skipped {len(assets.skipped)} unusable picture(s), listed in {out / 'skipped.json'}",
                  file=sys.stderr)
        write_assets(out, assets, plan.depth_scale)

        wanted = parse_shards(shards, plan.total_shards)
        todo = [i for i in wanted if not plan.shard_path(i).exists()]
        total = sum(plan.shard_count(*plan.locate(i)) for i in todo)
        written, computed = 0, teacher.computed if teacher is not None else 0
        with Progress(total, "data make", unit="samples", enabled=progress) as bar:
            tasks = [(plan, i) for i in todo]
            results = pool.imap_unordered(build_task, tasks) if pool is not None else map(build_task, tasks)
            for n, c in results:
                written += n
                computed += c
                bar.update(n)
        ok = True
    finally:
        torch.set_num_threads(threads)
        clear_caches()
        if pool is not None:
            pool.close() if ok else pool.terminate()
            pool.join()
    return {"shards_written": len(todo), "samples_written": written, "shards_complete_before": len(wanted) - len(todo),
            "shards_in_range": len(wanted), "total_shards": plan.total_shards, "teacher_computed": computed,
            "metadata": meta.json}
