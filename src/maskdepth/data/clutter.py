"""Furnished rooms: cutouts composited into the empty scenes themselves, as static clutter.

Real empty scenes are full of things (tables, chairs, plants, parked bicycles); procedural rooms are bare walls
and floors. `furnish` stands `per_background` cutouts in every background with the compositor's own rule (size by
perspective, contact and cast shadows, z-buffer), so they are part of the scene: in bg and image alike, with their
true depth, off the floor for later placements, and in front of any foreground drawn behind them (which they then
occlude). A model trained on furnished rooms must tell a new object from a structured background rather than from
a plain wall.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from maskdepth.data.banks import STREAM_CLUTTER, BackgroundBank, CutoutBank, seed_for
from maskdepth.data.compose import ComposeConfig, composite, sample_placements
from maskdepth.data.cutouts import Cutout
from maskdepth.data.rooms import Background
from maskdepth.errors import UserError

CHUNK = 64  # backgrounds composited at once: bounds the memory of a large bank


def furnish(bgs: BackgroundBank, cutouts: CutoutBank, per_background: int, seed: int,
            cfg: ComposeConfig = ComposeConfig()) -> BackgroundBank:
    """`bgs` with `per_background` cutouts of `cutouts` standing in each (a function of the banks and `seed`).

    They are placed and shaded by `cfg`'s rules, without camouflage or floor reflections (those are about the
    foreground), and each covers its floor pixels, so nothing later stands inside it. A background whose floor an
    object would cover entirely keeps that object out."""
    if per_background <= 0:
        return bgs
    if (bgs.depth <= 0).any():  # an object's depth there would be unknown, so it could not hide what is behind
        raise UserError(f"clutter = {per_background} needs backgrounds whose depth is known everywhere (procedural "
                        "rooms); photos hold their own clutter: set clutter to 0 for them")
    cfg = dataclasses.replace(cfg, camo_prob=0.0, camo_luma=0.0, reflection_prob=0.0)
    g = torch.Generator(device=bgs.device).manual_seed(seed_for(seed, STREAM_CLUTTER, 0))
    image, depth, floor = bgs.image.clone(), bgs.depth.clone(), bgs.floor.clone()
    for _ in range(per_background):
        current = _bank(bgs, image, depth, floor)
        for lo in range(0, len(bgs), CHUNK):
            idx = torch.arange(lo, min(lo + CHUNK, len(bgs)), device=bgs.device)
            fg = torch.randint(len(cutouts), (len(idx),), generator=g, device=bgs.device)
            flip = torch.rand(len(idx), generator=g, device=bgs.device) < 0.5
            p = sample_placements(current, cutouts, idx, fg, flip, g, cfg)
            out = composite(current, cutouts, p, cfg)
            covered = out["mask"] >= 0.5
            keeps_floor = (floor[idx] & ~covered).flatten(1).any(1).view(-1, 1, 1, 1)
            image[idx] = torch.where(keeps_floor, (out["image"] * 255).round().to(torch.uint8), image[idx])
            depth[idx] = torch.where(keeps_floor, out["depth"], depth[idx])
            floor[idx] = torch.where(keeps_floor, floor[idx] & ~covered, floor[idx])
    return _bank(bgs, image, depth, floor)


def _bank(bgs: BackgroundBank, image: torch.Tensor, depth: torch.Tensor, floor: torch.Tensor) -> BackgroundBank:
    """A bank of these pictures with `bgs`'s focal lengths (placement depth and floor lists rebuilt)."""
    rgb = image.permute(0, 2, 3, 1).cpu().numpy()
    made = BackgroundBank.from_arrays(list(rgb), list(depth[:, 0].cpu().numpy()), list(floor[:, 0].cpu().numpy()),
                                      bgs.focal_px.tolist())
    return made.to(bgs.device)


def furnish_backgrounds(backgrounds: Sequence[Background], cutouts: Sequence[Cutout], per_background: int,
                        seed: int, cfg: ComposeConfig = ComposeConfig()) -> list[Background]:
    """`furnish` for lists, what `maskdepth data make` writes as the dataset's backgrounds."""
    if per_background <= 0:
        return list(backgrounds)
    bank = furnish(BackgroundBank.from_backgrounds(backgrounds), CutoutBank.from_cutouts(cutouts), per_background,
                   seed, cfg)
    rgb = bank.image.permute(0, 2, 3, 1).numpy()
    return [Background(image=rgb[i], depth=bank.depth[i, 0].numpy(), floor=bank.floor[i, 0].numpy(),
                       focal_px=b.focal_px) for i, b in enumerate(backgrounds)]
