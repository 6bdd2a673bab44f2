"""Rendering for `maskdepth data make`: one shard of a `ShardPlan` composed from the dataset folder's stored
backgrounds and cutouts, encoded and written (in a worker process); see data/make.py."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdepth.codecs import encode_depth_png, encode_jpeg, encode_png
from maskdepth.data.banks import (
    STREAM_SHARD,
    BackgroundBank,
    CutoutBank,
    seed_for,
)
from maskdepth.data.compose import ComposeConfig, Placement, composite, placement_windows, sample_placements
from maskdepth.data.make_plan import JPEG_QUALITY, ShardPlan
from maskdepth.data.shards import write_shard
from maskdepth.data.teacher import DepthTeacher
from maskdepth.fileio import (
    remove_stale_temps,
)

CHUNK = 64  # samples composited together on the CPU

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
    camo, camo_patch, camo_luma = p.camo.numpy(), p.camo_patch.numpy(), p.camo_luma.numpy()
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
                "camouflage_patch": bool(camo_patch[i]), "camouflage_luma": bool(camo_luma[i]),
                "shading": [round(float(x), 3) for x in shading[i]]}
        encoded[i] = (f"{split}-{int(k[i]):07d}", {
            "fg_bg.jpg": encode_jpeg(image, JPEG_QUALITY),
            "mask.png": encode_png(mask),
            "depth.png": encode_depth_png(depth, plan.depth_scale),
            "json": json.dumps(info, sort_keys=True, separators=(",", ":")).encode(),
        })
    remove_temps_of(plan.shard_path(index))
    return write_shard(plan.shard_path(index), encoded)  # type: ignore[arg-type]


def remove_temps_of(path: Path) -> None:
    """Remove what an interrupted write of `path` left (make holds the folder's lock: no other writer)."""
    remove_stale_temps(path.parent, path.name)


def init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; threads would only fight each other


def build_task(args: tuple[ShardPlan, int]) -> tuple[int, int]:
    """(samples written, pictures the teacher computed for them) for one shard."""
    before = sum(t.computed for t in _TEACHER.values())
    n = build_shard(*args)
    return n, sum(t.computed for t in _TEACHER.values()) - before


def clear_caches() -> None:
    """Forget the banks and teacher this process loaded (the end of a make)."""
    _BANKS.clear()
    _TEACHER.clear()
