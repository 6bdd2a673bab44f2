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
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.codecs import encode_depth_png, encode_jpeg, encode_png
from maskdepth.data import photos
from maskdepth.data.banks import (
    CUTOUT_SIZE,
    NOMINAL_HORIZON,
    STREAM_ORDER,
    STREAM_SHARD,
    STREAM_SPLIT,
    BackgroundBank,
    CutoutBank,
    nominal_ground,
    procedural_background,
    procedural_foreground,
    seed_for,
)
from maskdepth.data.compose import ComposeConfig, Placement, composite, placement_windows, sample_placements
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
    held_out,
    round_depth_max,
    shard_name,
)
from maskdepth.data.rooms import MAX_DEPTH_M
from maskdepth.data.shards import write_shard
from maskdepth.data.teacher import DepthTeacher, format_flag
from maskdepth.errors import UserError
from maskdepth.fileio import (
    atomic_write_bytes,
    folder_lock,
    prepare_output_dir,
    remove_owned,
    remove_stale_temps,
)
from maskdepth.progress import Progress

GENERATOR_NAME = "maskdepth.data.make"
TEACHER_MODES = ("per-background", "per-composite")
JPEG_QUALITY = 92
CHUNK = 64  # samples composited together on the CPU
PRESETS: dict[str, dict[str, Any]] = {
    # the seeds' scale: 100 backgrounds x 100 cutouts x 2 flips x 20 placements = 400,000 samples at 192x192
    "seed": {"backgrounds": 100, "foregrounds": 100, "per_pair": 20, "size": (192, 192)},
}


@dataclass(frozen=True)
class MakeConfig:
    """Everything that decides a dataset's content. `foregrounds` counts cutouts (each also drawn mirrored)."""

    size: tuple[int, int] = (192, 192)
    backgrounds: int = 20
    foregrounds: int = 20
    per_pair: int = 20
    seed: int = 0
    shard_size: int = 1000
    test_fraction: float = 0.1
    bg_dir: str | None = None  # the user's background photos instead of procedural rooms
    fg_dir: str | None = None  # the user's RGBA cutouts instead of procedural ones
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    fit: str = "crop"  # photos: "crop" or "letterbox" to the size (data/photos.py)
    horizon: float = NOMINAL_HORIZON  # photos: the floor lies below this fraction of the height
    teacher: str | None = None  # depth teacher model for the photos (data/teacher.py)
    teacher_mode: str = "per-background"  # or "per-composite": the teacher sees every composite
    teacher_settings: dict[str, Any] = field(default_factory=dict)  # TeacherSettings fields set by flags

    def check(self) -> None:
        h, w = self.size
        if not (16 <= h <= 4096 and 16 <= w <= 4096):
            raise UserError(f"--size {h}x{w}: each side must be between 16 and 4096 pixels")
        for name in ("backgrounds", "foregrounds", "per_pair", "shard_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if not 0 <= self.test_fraction < 1:
            raise UserError(f"--test-fraction {self.test_fraction}: must be in [0, 1)")
        if not 0 <= self.horizon < 0.9:
            raise UserError(f"--horizon {self.horizon}: give the fraction of the height where the floor starts, "
                            "in [0, 0.9)")
        if self.teacher and not self.bg_dir:
            raise UserError("--depth-teacher gives depth to your photos (--bg-dir); procedural rooms have exact "
                            "depth already")
        if self.teacher_mode not in TEACHER_MODES:
            raise UserError(f"--teacher-mode {self.teacher_mode}: use one of {', '.join(TEACHER_MODES)}")


def command_line(cfg: MakeConfig) -> str:
    """The command that rebuilds exactly this dataset (into any OUT, with any --workers or --shards)."""
    h, w = cfg.size
    parts = ["maskdepth data make OUT", f"--size {h}x{w}"]
    parts += [f"--bg-dir {cfg.bg_dir}"] if cfg.bg_dir else [f"--backgrounds {cfg.backgrounds}"]
    parts += [f"--fg-dir {cfg.fg_dir}"] if cfg.fg_dir else [f"--foregrounds {cfg.foregrounds}"]
    parts += [f"--per-pair {cfg.per_pair}", f"--seed {cfg.seed}", f"--shard-size {cfg.shard_size}",
              f"--test-fraction {cfg.test_fraction}"]
    if cfg.bg_dir:
        parts += [f"--fit {cfg.fit}", f"--horizon {cfg.horizon}"]
    default = ComposeConfig()
    if (cfg.compose.min_height, cfg.compose.max_height) != (default.min_height, default.max_height):
        parts += [f"--fg-scale {cfg.compose.min_height}:{cfg.compose.max_height}"]
    if cfg.compose.is_plain:
        parts += ["--plain"]
    if cfg.teacher:
        parts += [f"--depth-teacher {cfg.teacher}", f"--teacher-mode {cfg.teacher_mode}"]
        parts += [format_flag(k, v) for k, v in sorted(cfg.teacher_settings.items())]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# the plan: which samples each shard holds


@dataclass(frozen=True)
class ShardPlan:
    """What the workers need to build any shard (small and picklable)."""

    root: str
    cfg: MakeConfig
    n_cutouts: int
    split_backgrounds: dict[str, tuple[int, ...]]  # split -> background ids
    digest: str = ""  # of the metadata: a worker's banks are reused only for the same dataset
    depth_scale: float = DEPTH_SCALE  # of the depth PNGs
    depth_max: float = 0.0  # the dataset's depth bound (teacher depth of composites is clipped to it)
    teacher_cache: str | None = None  # per-composite mode: where workers cache teacher results
    teacher_device: str = "cpu"

    def split_samples(self, split: str) -> int:
        return len(self.split_backgrounds[split]) * self.n_cutouts * 2 * self.cfg.per_pair

    def split_shards(self, split: str) -> int:
        return math.ceil(self.split_samples(split) / self.cfg.shard_size)

    @property
    def total_shards(self) -> int:
        return sum(self.split_shards(s) for s in SPLITS)

    def locate(self, index: int) -> tuple[str, int]:
        """Global shard index -> (split, index within the split). Train shards come first."""
        for split in SPLITS:
            n = self.split_shards(split)
            if index < n:
                return split, index
            index -= n
        raise IndexError(index)

    def shard_path(self, index: int) -> Path:
        split, j = self.locate(index)
        return Path(self.root) / "shards" / shard_name(split, j)

    def shard_count(self, split: str, j: int) -> int:
        return min(self.cfg.shard_size, self.split_samples(split) - j * self.cfg.shard_size)

    def triples(self, split: str, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sample number in the split, background id, cutout id, flip) of shard j's samples."""
        per_pair, n_cut = self.cfg.per_pair, self.n_cutouts
        order = _split_order(self.cfg.seed, SPLITS.index(split), self.split_samples(split))
        k = np.arange(j * self.cfg.shard_size, j * self.cfg.shard_size + self.shard_count(split, j))
        pair = order[k] // per_pair
        bgs = np.asarray(self.split_backgrounds[split], dtype=np.int64)
        return k, bgs[pair // (2 * n_cut)], (pair % (2 * n_cut)) // 2, pair % 2


_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _split_order(seed: int, split_code: int, n: int) -> np.ndarray:
    key = (seed, split_code, n)
    if key not in _ORDER_CACHE:
        _ORDER_CACHE[key] = np.random.default_rng(seed_for(seed, STREAM_ORDER, split_code)).permutation(n)
    return _ORDER_CACHE[key]


def held_out_backgrounds(seed: int, n_backgrounds: int, fraction: float) -> list[int]:
    """The held-out backgrounds: the format's rule (`format.held_out`), drawn with numpy from (seed, split)."""
    rng = np.random.default_rng(seed_for(seed, STREAM_SPLIT))
    return held_out(range(n_backgrounds), fraction,
                    lambda groups, k: [int(groups[i]) for i in rng.choice(len(groups), size=k, replace=False)])


# ---------------------------------------------------------------------------------------------------------------
# building one shard (in a worker)

_BANKS: dict[tuple[str, str], tuple[BackgroundBank, CutoutBank, np.ndarray, np.ndarray]] = {}


def _banks(plan: ShardPlan) -> tuple[BackgroundBank, CutoutBank, np.ndarray, np.ndarray]:
    """Banks read back from the dataset folder (once per process), so shards are composed from exactly the stored
    backgrounds and cutouts; plus the backgrounds as (B,H,W,3) uint8 and (B,H,W) float32 depth."""
    key = (plan.root, plan.digest)
    if key not in _BANKS:
        _BANKS.clear()
        bgs = BackgroundBank.from_dataset(plan.root)
        cutouts = CutoutBank.from_dataset(plan.root)
        _BANKS[key] = (bgs, cutouts, bgs.image.permute(0, 2, 3, 1).contiguous().numpy(), bgs.depth[:, 0].numpy())
    return _BANKS[key]


def _chunks(hw: np.ndarray, ww: np.ndarray) -> list[np.ndarray]:
    """Sample indices grouped by window size (two bins per octave of height and of width), at most CHUNK per
    group: a chunk is composited at its largest window, so similar sizes waste little."""
    bins = np.stack([np.ceil(2 * np.log2(np.maximum(hw, 1))), np.ceil(2 * np.log2(np.maximum(ww, 1)))], 1)
    groups: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(map(tuple, bins)):
        groups.setdefault(key, []).append(i)
    return [np.asarray(g[s:s + CHUNK]) for _, g in sorted(groups.items()) for s in range(0, len(g), CHUNK)]


def render_samples(bgs: BackgroundBank, cutouts: CutoutBank, p: Placement, cfg: ComposeConfig,
                   bg_rgb: np.ndarray, bg_depth: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (i, image (H,W,3) uint8, mask (H,W) uint8, depth (H,W) float32) for each placement, in an order of
    window sizes. Only each placement's window is composited (`composite` with a window gives the full frame's
    values there; outside it the frame is the background), in chunks of similar window size."""
    h_img, w_img = bgs.size
    win = placement_windows(cutouts, p, cfg, (h_img, w_img)).numpy()
    wh = np.maximum(win[:, 3] - win[:, 1], 1)
    ww = np.maximum(win[:, 2] - win[:, 0], 1)
    bg_idx = p.bg_idx.numpy()
    for idx in _chunks(wh, ww):
        ch, cw = int(wh[idx].max()), int(ww[idx].max())
        ox = np.minimum(win[idx, 0], w_img - cw)
        oy = np.minimum(win[idx, 1], h_img - ch)
        origin = torch.from_numpy(np.stack([ox, oy], 1))
        out = composite(bgs, cutouts, p.select(torch.from_numpy(idx)), cfg, origin, (ch, cw))
        image = (out["image"] * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        mask = (out["mask"][:, 0] * 255).round_().to(torch.uint8).numpy()
        depth = out["depth"][:, 0].numpy()
        for n, i in enumerate(idx.tolist()):
            b, x, y = bg_idx[i], ox[n], oy[n]
            full_image = bg_rgb[b].copy()
            full_image[y:y + ch, x:x + cw] = image[n]
            full_mask = np.zeros((h_img, w_img), np.uint8)
            full_mask[y:y + ch, x:x + cw] = mask[n]
            full_depth = bg_depth[b].copy()
            full_depth[y:y + ch, x:x + cw] = depth[n]
            yield i, full_image, full_mask, full_depth


_TEACHER: dict[tuple[str, str], Any] = {}


def _teacher(plan: ShardPlan):
    """The depth teacher of a per-composite make, loaded once per process (one thread: same bits everywhere)."""
    key = (plan.root, plan.digest)
    if key not in _TEACHER:
        _TEACHER.clear()
        _TEACHER[key] = DepthTeacher.from_path(plan.cfg.teacher, device=plan.teacher_device, threads=1,
                                               cache_dir=plan.teacher_cache, **plan.cfg.teacher_settings)
    return _TEACHER[key]


def teacher_depths(teacher, samples: Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]], depth_max: float
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per-composite mode: each sample's depth becomes the teacher's depth of its composite (bounded by the
    dataset's depth_max), in batches of the teacher's size."""
    samples = iter(samples)
    while batch := list(itertools.islice(samples, teacher.batch_size)):
        depths = teacher.predict([image for _, image, _, _ in batch])
        for (i, image, mask, _), d in zip(batch, depths):
            yield i, image, mask, np.minimum(d, depth_max)


def build_shard(plan: ShardPlan, index: int) -> int:
    """Write global shard `index` (atomically). Returns its sample count."""
    bgs, cutouts, bg_rgb, bg_depth = _banks(plan)
    split, j = plan.locate(index)
    k, bg_id, cut_id, flip = plan.triples(split, j)
    g = torch.Generator().manual_seed(seed_for(plan.cfg.seed, STREAM_SHARD, index))
    p = sample_placements(bgs, cutouts, torch.from_numpy(bg_id), torch.from_numpy(cut_id),
                          torch.from_numpy(flip.astype(bool)), g, plan.cfg.compose)
    box = p.box.double().numpy().round(2)
    contact = p.contact.numpy()
    scale, depth_c, shadow = p.scale.numpy(), p.contact_depth.numpy(), p.shadow.numpy()
    known = p.depth_known.numpy()
    cast, light, reflection = p.cast.numpy(), p.light.numpy(), p.reflection.numpy()
    camo, camo_patch = p.camo.numpy(), p.camo_patch.numpy()
    shading = torch.cat([p.fg_gain[:, None], p.fg_tilt], 1).numpy()
    encoded: list[tuple[str, dict[str, bytes]] | None] = [None] * len(k)
    samples = render_samples(bgs, cutouts, p, plan.cfg.compose, bg_rgb, bg_depth)
    if plan.cfg.teacher and plan.cfg.teacher_mode == "per-composite":
        samples = teacher_depths(_teacher(plan), samples, plan.depth_max)
    for i, image, mask, depth in samples:
        info = {"bg": int(bg_id[i]), "fg": int(cut_id[i]), "flip": bool(flip[i]), "box": box[i].tolist(),
                "scale": round(float(scale[i]), 4), "contact": [float(contact[i, 0]), float(contact[i, 1])],
                "contact_depth": round(float(depth_c[i]), 4), "depth_known": bool(known[i]),
                "shadow": round(float(shadow[i]), 3), "cast_shadow": round(float(cast[i]), 3),
                "light": [round(float(light[i, 0]), 3), round(float(light[i, 1]), 3)],
                "reflection": round(float(reflection[i]), 3), "camouflage": round(float(camo[i]), 3),
                "camouflage_patch": bool(camo_patch[i]), "shading": [round(float(x), 3) for x in shading[i]]}
        encoded[i] = (f"{split}-{int(k[i]):07d}", {
            "fg_bg.jpg": encode_jpeg(image, JPEG_QUALITY),
            "mask.png": encode_png(mask),
            "depth.png": encode_depth_png(depth, plan.depth_scale),
            "json": json.dumps(info, sort_keys=True, separators=(",", ":")).encode(),
        })
    _remove_stale_temps(plan.shard_path(index))
    return write_shard(plan.shard_path(index), encoded)  # type: ignore[arg-type]


def _remove_stale_temps(path: Path) -> None:
    """Remove what an interrupted write of `path` left (make holds the folder's lock: no other writer)."""
    remove_stale_temps(path.parent, path.name)


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


def _procedural_fg(args: tuple[int, int]):
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
        cutouts = list(run(_procedural_fg, [(cfg.seed, i) for i in range(cfg.foregrounds)]))
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


def write_assets(root: Path, assets: Assets, depth_scale: float = DEPTH_SCALE) -> None:
    """Backgrounds (RGB, 16-bit depth, floor) and cutouts (RGBA), each file skipped if already there."""
    def put(path: Path, make) -> None:
        if not path.exists():
            _remove_stale_temps(path)
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


def parse_shards(text: str | None, total: int) -> range:
    """'a:b' (either end may be left out) -> range of global shard indices within [0, total)."""
    if text is None:
        return range(total)
    a, sep, b = text.partition(":")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else total
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi <= total:
        raise UserError(f"--shards {text}: give a range a:b with 0 <= a < b <= {total} (this dataset has {total} "
                        "shards)")
    return range(lo, hi)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; threads would only fight each other


def _build_task(args: tuple[ShardPlan, int]) -> tuple[int, int]:
    """(samples written, pictures the teacher computed for them) for one shard."""
    before = sum(t.computed for t in _TEACHER.values())
    n = build_shard(*args)
    return n, sum(t.computed for t in _TEACHER.values()) - before


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
    pool = ctx.Pool(workers, initializer=_init_worker) if workers > 1 else None
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
            old = DatasetMetadata.read(out)
            if old != meta:
                diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                raise UserError(f"{out}: holds a different maskdepth dataset (differs in {', '.join(diff)}); "
                                "choose another folder, rerun with its own options, or pass --force to replace it")
        else:
            _remove_stale_temps(out / METADATA)
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
            results = pool.imap_unordered(_build_task, tasks) if pool is not None else map(_build_task, tasks)
            for n, c in results:
                written += n
                computed += c
                bar.update(n)
        ok = True
    finally:
        torch.set_num_threads(threads)
        _BANKS.clear()
        _TEACHER.clear()
        if pool is not None:
            pool.close() if ok else pool.terminate()
            pool.join()
    return {"shards_written": len(todo), "samples_written": written, "shards_complete_before": len(wanted) - len(todo),
            "shards_in_range": len(wanted), "total_shards": plan.total_shards, "teacher_computed": computed,
            "metadata": meta.json}
