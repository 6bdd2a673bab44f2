"""align.py: the bg capture registered onto the picture (a nudged camera, changed light), and its use by predict."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import maskdepth
from maskdepth import align
from maskdepth.data.capture import CaptureConfig
from maskdepth.data.compose import ComposeConfig
from maskdepth.data.generator import OnTheFlyGenerator
from maskdepth.realbench import _move

PLAIN = ComposeConfig(cast_prob=0, reflection_prob=0, camo_prob=0, shade_prob=0)


@pytest.fixture(scope="module")
def rooms():
    """(bg, image, mask) of 6 procedural composites at 128x160, the bg captured exactly (uint8 arrays)."""
    batch = next(OnTheFlyGenerator.procedural(6, 6, (128, 160), seed=3, batch_size=6, compose=PLAIN,
                                              capture=CaptureConfig.off()))

    def u8(x):
        return list((x.permute(0, 2, 3, 1) * 255).round().byte().numpy())

    return u8(batch["bg"]), u8(batch["image"]), batch["mask"][:, 0].numpy() > 0.5


def _t(arrays):
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def _moves(n):
    rng = np.random.default_rng(0)
    r, a = rng.uniform(1.0, 3.0, n), rng.uniform(0, 2 * math.pi, n)
    return [(float(r[k] * math.cos(a[k])), float(r[k] * math.sin(a[k])), float(rng.uniform(-0.5, 0.5)))
            for k in range(n)]


def test_a_nudged_camera_and_changed_light_are_recovered(rooms):
    bgs, images, _ = rooms
    moves = _moves(len(bgs))
    gains = np.array([0.9, 1.0, 1.12])
    moved = [np.clip(_move(b, (dx, dy), ang) * gains, 0, 255).astype(np.uint8) for b, (dx, dy, ang) in zip(bgs, moves)]
    reg = align.register(_t(moved), _t(images))
    for k, (dx, dy, ang) in enumerate(moves):
        d = reg.describe(k)
        # _move samples the bg at the rotated, shifted place; the registration maps the picture back onto it
        np.testing.assert_allclose(d["shift_px"], [dx, dy], atol=0.15)
        assert d["rotation_deg"] == pytest.approx(-ang, abs=0.05)
        assert abs(d["scale"] - 1) < 0.003
        np.testing.assert_allclose(d["gain"], 1 / gains, atol=0.03)
    # the registered bg matches the picture where there is no foreground far better than the capture did
    out = align.apply(_t(moved), reg)
    clean = _t(images)
    keep = ~torch.from_numpy(np.stack(rooms[2]))[:, None]
    keep[..., :4, :] = keep[..., -4:, :] = keep[..., :, :4] = keep[..., :, -4:] = False
    before = ((_t(moved) - clean).abs() * keep).sum() / keep.sum()
    after = ((out - clean).abs() * keep).sum() / keep.sum()
    assert after < 0.25 * before


def test_the_strip_a_moved_capture_does_not_cover_is_the_pictures_own(rooms):
    bgs, images, _ = rooms
    moved = [_move(b, (3.0, 0.0), 0.0) for b in bgs[:2]]  # the camera turned: 3 columns new at one side
    bg, image = _t(moved), _t(images[:2])
    reg = align.register(bg, image)
    filled, repeated = align.apply(bg, reg, image), align.apply(bg, reg)
    side = slice(-2, None) if float(reg.motion[0, 2]) > 0 else slice(0, 2)
    assert torch.equal(filled[..., side], image[..., side])  # no change seen there, none reported
    assert (repeated[..., side] - image[..., side]).abs().mean() > 0.02
    assert torch.equal(filled[..., 8:-8, 8:-8], repeated[..., 8:-8, 8:-8])  # inside, the same moved bg
    # a camera moved by less than half a pixel: the outer pixels are still the capture's own
    nudge = align.Registration(motion=torch.tensor([[0.0, 0.0, 0.3, -0.3]] * 2), gain=torch.ones(2, 3),
                               bias=torch.zeros(2, 3), size=tuple(image.shape[-2:]))
    assert torch.equal(align.apply(bg, nudge, image), align.apply(bg, nudge))


def test_an_unmoved_capture_stays_put(rooms):
    bgs, images, _ = rooms
    reg = align.register(_t(bgs), _t(images))
    assert float(reg.shift_px().max()) < 0.1
    torch.testing.assert_close(reg.gain, torch.ones_like(reg.gain), atol=0.02, rtol=0)


def test_a_featureless_scene_gives_no_motion_and_no_nan():
    bg = torch.full((2, 3, 64, 80), 0.4)
    image = bg.clone()
    image[:, :, 20:40, 30:50] = 0.9
    reg = align.register(bg, image)
    assert torch.isfinite(reg.motion).all() and torch.isfinite(reg.gain).all()
    assert float(reg.shift_px().max()) < 0.05
    out = align.apply(bg, reg)
    assert out.shape == bg.shape and float((out - image)[:, :, :10].abs().max()) < 0.02


def test_a_move_beyond_a_nudge_is_not_taken(rooms):
    bgs, images, _ = rooms
    far = [np.roll(b, 30, axis=1) for b in bgs]  # a fifth of the frame: another camera pose, not a nudge
    reg = align.register(_t(far), _t(images))
    assert float(reg.shift_px().max()) <= align.MAX_SHIFT * 160


def test_register_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        align.register(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_predict_with_a_moved_capture_is_better_aligned_than_not(rooms):
    bgs, images, gt = rooms
    moved = [_move(b, (dx, dy), ang) for b, (dx, dy, ang) in zip(bgs, _moves(len(bgs)))]
    scores = {}
    for on in (True, False):
        preds = maskdepth.load_model(align_bg=on).predict(moved, images)
        tp = sum(int((p.mask & g).sum()) for p, g in zip(preds, gt))
        scores[on] = tp / sum(int((p.mask | g).sum()) for p, g in zip(preds, gt))
        assert all((p.registration is not None) == on for p in preds)
    assert scores[True] > scores[False]


def test_registration_is_described_for_the_frame_it_was_estimated_for(rooms):
    bgs, images, _ = rooms
    moved = [_move(bgs[0], (2.0, 0.0), 0.0)]
    reg = align.register(_t(moved), _t(images[:1]))
    d = reg.describe(0)
    assert d["size"] == [128, 160]
    assert d["shift_px"][0] == pytest.approx(2.0, abs=0.15) and abs(d["shift_px"][1]) < 0.15
    assert dataclasses.asdict(reg)["size"] == (128, 160)


def _close_up(bgs, cover):
    """The pictures with a textured foreground filling the middle `cover` of the frame's area (a person right in
    front of the camera), and its mask."""
    rng = np.random.default_rng(5)
    h, w = bgs[0].shape[:2]
    side = math.sqrt(cover)
    y0, x0 = int(h * (1 - side) / 2), int(w * (1 - side) / 2)
    mask = np.zeros((h, w), bool)
    mask[y0:h - y0, x0:w - x0] = True
    coarse = rng.integers(0, 256, (len(bgs), h // 8, w // 8, 3), dtype=np.uint8)
    texture = coarse.repeat(8, axis=1).repeat(8, axis=2)
    return [np.where(mask[..., None], t, b) for b, t in zip(bgs, texture)], mask


def test_a_foreground_over_half_the_frame_is_not_taken_for_changed_light(rooms):
    bgs, _, _ = rooms
    images, _ = _close_up(bgs, 0.5)  # where a median scale gave gains 0.25-0.6 off
    gains = np.array([0.9, 1.0, 1.12])  # the light did change: only the empty scene's pixels can tell by how much
    relit = [np.clip(b * gains, 0, 255).astype(np.uint8) for b in bgs]
    reg = align.register(_t(relit), _t(images))
    assert float(reg.shift_px().max()) < 0.1
    np.testing.assert_allclose(reg.gain.numpy(), np.broadcast_to(1 / gains, (len(bgs), 3)), atol=0.03)
    torch.testing.assert_close(reg.bias, torch.zeros_like(reg.bias), atol=0.02, rtol=0)
    # and a nudged camera is still found
    moves = _moves(len(bgs))
    moved = [_move(b, (dx, dy), ang) for b, (dx, dy, ang) in zip(bgs, moves)]
    reg = align.register(_t(moved), _t(images))
    for k, (dx, dy, _) in enumerate(moves):
        np.testing.assert_allclose(reg.describe(k)["shift_px"], [dx, dy], atol=0.15)


def test_a_frame_all_foreground_keeps_the_capture_as_it_was():
    # nothing of the empty scene is left to fit: no recolouring may stand in for the foreground
    rng = np.random.default_rng(6)
    bg = torch.from_numpy(rng.uniform(0.3, 0.7, (2, 3, 64, 80)).astype(np.float32))
    image = torch.full_like(bg, 0.05)
    image[:, :, :4] = bg[:, :, :4]  # a sliver of the scene: 6% of the frame
    reg = align.register(bg, image)
    assert torch.equal(reg.motion, torch.zeros_like(reg.motion))
    assert torch.equal(reg.gain, torch.ones_like(reg.gain)) and torch.equal(reg.bias, torch.zeros_like(reg.bias))
    assert torch.equal(align.apply(bg, reg, image), bg)


def test_highlights_the_brighter_capture_clipped_are_the_pictures_not_a_change(rooms):
    bgs, images, masks = rooms
    # the empty scene captured 60% brighter: its highlights clipped, and the registration's gain of about 1/1.6
    # brings them down to 0.62, below the picture's own colours there
    bright = [np.clip(b.astype(np.float64) * 1.6, 0, 255).astype(np.uint8) for b in bgs]
    bg, image = _t(bright), _t(images)
    reg = align.register(bg, image)
    np.testing.assert_allclose(reg.gain.numpy(), np.full((len(bgs), 3), 1 / 1.6), atol=0.03)
    bounded, unbounded = align.apply(bg, reg, image), align.apply(bg, reg)
    fg = torch.from_numpy(np.stack(masks))[:, None].expand_as(bg)
    clipped = bg >= align.SATURATED
    scene = clipped & ~fg
    assert scene.float().mean() > 0.05
    assert float((bounded - image)[scene].abs().mean()) < 0.005  # the picture: no change seen there
    assert float((unbounded - image)[scene].abs().mean()) > 0.05
    # a foreground darker than that bound is still a change; elsewhere the registered bg is untouched
    dark = clipped & fg & (image < unbounded - 0.05)
    assert dark.any() and torch.equal(bounded[dark], unbounded[dark])
    assert torch.equal(bounded[~clipped], unbounded[~clipped])
