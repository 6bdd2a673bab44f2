"""Furnished rooms: static clutter composited into the backgrounds, the same in the generator and `data make`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from maskdepth.data.banks import BackgroundBank, CutoutBank, procedural_background, procedural_foreground
from maskdepth.data.clutter import furnish
from maskdepth.data.compose import ComposeConfig, composite, sample_placements
from maskdepth.data.format import background_files
from maskdepth.data.generator import OnTheFlyGenerator
from maskdepth.data.make import MakeConfig, make_dataset
from maskdepth.errors import UserError

SIZE = (48, 64)


def _banks(n_bg: int = 4, n_fg: int = 3) -> tuple[BackgroundBank, CutoutBank]:
    bgs = BackgroundBank.from_backgrounds([procedural_background(0, i, SIZE) for i in range(n_bg)])
    cutouts = CutoutBank.from_cutouts([procedural_foreground(0, i, size=32) for i in range(n_fg)])
    return bgs, cutouts


def test_furnish_stands_objects_in_every_room_with_their_depth_and_off_the_floor():
    bgs, cutouts = _banks()
    room = furnish(bgs, cutouts, 2, seed=1)
    assert furnish(bgs, cutouts, 0, seed=1) is bgs
    again = furnish(bgs, cutouts, 2, seed=1)
    assert torch.equal(room.image, again.image) and torch.equal(room.depth, again.depth)  # seeded
    assert not torch.equal(furnish(bgs, cutouts, 2, seed=2).image, room.image)
    nearer = room.depth < bgs.depth - 1e-4  # where an object stands in front of the room's surface
    for i in range(len(bgs)):
        assert nearer[i].any(), f"room {i} got no object"
        assert (room.image[i] != bgs.image[i]).any(0)[nearer[i, 0]].float().mean() > 0.5
    assert (room.depth <= bgs.depth + 1e-4).all()  # objects stand in the room, never behind its walls
    assert not (room.floor & nearer).any()  # nothing later stands inside an object
    assert (room.floor <= bgs.floor).all() and (room.floor_count > 0).all()
    assert torch.equal(room.focal_px, bgs.focal_px)


def test_clutter_hides_a_foreground_that_stands_behind_it():
    bgs, cutouts = _banks()
    room = furnish(bgs, cutouts, 3, seed=1)
    g = torch.Generator().manual_seed(0)
    n = 256
    cfg = ComposeConfig()
    p = sample_placements(room, cutouts, torch.arange(n) % len(room), torch.randint(3, (n,), generator=g),
                          torch.zeros(n, dtype=torch.bool), g, cfg)
    out = composite(room, cutouts, p, cfg)
    # the z-buffer against the furnished depth: no foreground pixel lies behind the clutter there
    clutter = room.depth[p.bg_idx] < bgs.depth[p.bg_idx] - 1e-4
    fg = out["mask"] >= 0.5
    assert (fg & clutter).any()  # some stand in front of clutter
    assert (out["depth"][fg & clutter] <= room.placement_depth[p.bg_idx][fg & clutter] + 1e-4).all()
    hidden = clutter & (p.contact_depth.view(n, 1, 1, 1) > room.placement_depth[p.bg_idx] + 0.05)
    assert hidden.any() and not (fg & hidden).any()  # and those behind it are hidden by it


def test_data_make_writes_the_rooms_the_generator_furnishes(tmp_path):
    cfg = MakeConfig(size=SIZE, backgrounds=3, foregrounds=2, per_pair=1, shard_size=50, test_fraction=0.0,
                     compose=dataclasses.replace(ComposeConfig(), clutter=2))
    make_dataset(tmp_path / "d", cfg, workers=1, progress=False)
    gen = OnTheFlyGenerator.procedural(3, 2, SIZE, seed=0, batch_size=2, compose=cfg.compose)
    plain = OnTheFlyGenerator.procedural(3, 2, SIZE, seed=0, batch_size=2)
    for i in range(3):
        written = np.asarray(Image.open(background_files(tmp_path / "d", i)[0]).convert("RGB"))
        np.testing.assert_array_equal(written, gen.bgs.image[i].permute(1, 2, 0).numpy())
    assert not torch.equal(gen.bgs.image, plain.bgs.image)


def test_clutter_is_refused_for_backgrounds_without_depth():
    bgs, cutouts = _banks(2)
    photo = dataclasses.replace(bgs, depth=torch.zeros_like(bgs.depth))
    with pytest.raises(UserError, match="depth is known everywhere"):
        furnish(photo, cutouts, 1, seed=0)
