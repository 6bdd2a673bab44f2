"""The composition rule (z-buffer, visible alpha, depth), its window form, shadows, banks and capture realism."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskdepth.data.banks import BackgroundBank, CutoutBank, nominal_ground
from maskdepth.data.capture import CaptureConfig, apply_capture, jpeg_roundtrip
from maskdepth.data.compose import ComposeConfig, Placement, composite, placement_windows, sample_placements

H, W = 48, 64


def ground_plane(seed: int, cam_h: float = 1.5, wall: float = 8.0, pillar: bool = False):
    """A camera looking level over a floor to a wall: floor depth h*f/(y - cy) below the horizon, the wall's
    depth above where the floor would be farther. `pillar`: a near column standing in front of the floor."""
    f, cy = 0.9 * H, 0.35 * H
    y = np.arange(H) + 0.5
    floor_d = np.where(y > cy, cam_h * f / np.maximum(y - cy, 1e-6), np.inf)
    floor_rows = floor_d < wall
    depth = np.repeat(np.where(floor_rows, floor_d, wall)[:, None], W, 1).astype(np.float32)
    floor = np.repeat(floor_rows[:, None], W, 1)
    if pillar:
        depth[:, 28:36] = 1.0
        floor[:, 28:36] = False
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 220, (H, W, 3), dtype=np.uint8)
    return image, depth, floor, f


def rect_cutout(h: int, w: int, color) -> np.ndarray:
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = color
    a[..., 3] = 255
    a[[0, -1], :, 3] = 128  # soft edge
    a[:, [0, -1], 3] = 128
    return a


def banks(pillar: bool = False) -> tuple[BackgroundBank, CutoutBank]:
    bgs = BackgroundBank.from_arrays(*zip(*[ground_plane(i, pillar=pillar) for i in range(3)]))
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 255, (50, 30, 4), dtype=np.uint8)
    cutouts = CutoutBank.from_rgba([rect_cutout(40, 20, (250, 10, 10)), rect_cutout(20, 36, (10, 250, 10)), blob],
                                   [1.7, 0.6, 1.0], size=32)
    return bgs, cutouts


def draw(bgs, cutouts, n=24, seed=0, cfg=ComposeConfig()):
    g = torch.Generator().manual_seed(seed)
    bg_idx = torch.randint(len(bgs), (n,), generator=g)
    fg_idx = torch.randint(len(cutouts), (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    return sample_placements(bgs, cutouts, bg_idx, fg_idx, flip, g, cfg)


def test_composite_depth_rule_and_z_buffer():
    bgs, cutouts = banks(pillar=True)
    cfg = ComposeConfig(shadow_prob=1.0)
    p = draw(bgs, cutouts, n=64, cfg=cfg)
    out = composite(bgs, cutouts, p, cfg)
    assert out["image"].shape == (64, 3, H, W) and out["mask"].shape == (64, 1, H, W)
    bg_depth = bgs.depth[p.bg_idx]
    outside = out["mask"] == 0
    assert outside.any() and (~outside).any()
    assert torch.equal(out["depth"][outside], bg_depth[outside])  # exactly the background's
    assert (out["depth"] <= bg_depth).all()  # inside: the foreground is nearer (or equal)
    # the z-buffer: where the background is nearer than the object (the pillar), nothing of it shows
    hidden = bgs.placement_depth[p.bg_idx] < p.contact_depth.view(-1, 1, 1, 1)
    assert (out["mask"][hidden] == 0).all()
    behind = (p.contact_depth > 1.0) & (p.box[:, 0] < 36) & (p.box[:, 2] > 28)
    assert behind.any()  # some objects do stand behind the pillar, so the test means something
    assert (out["depth"][out["mask"] >= 0.5] < 8.0 + 1e-6).all()
    assert torch.equal(out["depth_valid"], (out["depth"] > 0).float())
    assert 0 <= out["image"].min() and out["image"].max() <= 1


def direct_alpha(cutouts: CutoutBank, p: Placement, i: int) -> torch.Tensor:
    """The visible alpha of an unoccluded placement computed straight from the cutout's level-0 cell: each pixel
    centre mapped into the box, then into the cutout's region of the cell, sampled bilinearly."""
    s = cutouts.size
    x0, y0, x1, y1 = p.box[i].tolist()
    ox, oy, rw, rh = cutouts.region[p.fg_idx[i]].tolist()
    xs = torch.arange(W) + 0.5
    ys = torch.arange(H) + 0.5
    u = (xs - x0) / (x1 - x0)
    if p.flip[i]:
        u = 1 - u
    v = (ys - y0) / (y1 - y0)
    tx = (ox + u * rw) / s * 2 - 1  # normalised over the cell, align_corners=False
    ty = (oy + v * rh) / s * 2 - 1
    grid = torch.stack([tx.view(1, W).expand(H, W), ty.view(H, 1).expand(H, W)], -1)[None]
    cell = cutouts.rgba[p.fg_idx[i]][None]
    return F.grid_sample(cell, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 3]


@pytest.mark.parametrize("flip", [False, True])
def test_mask_is_the_cutouts_alpha_where_unoccluded(flip):
    bgs, cutouts = banks()
    n = 8
    g = torch.Generator().manual_seed(3)
    p = sample_placements(bgs, cutouts, torch.zeros(n, dtype=torch.long), torch.full((n,), 2),
                          torch.full((n,), flip), g, ComposeConfig())
    p = dataclasses.replace(p, level=torch.zeros(n, dtype=torch.long))  # the full-resolution cell
    out = composite(bgs, cutouts, p, ComposeConfig())
    for i in range(n):
        torch.testing.assert_close(out["mask"][i, 0], direct_alpha(cutouts, p, i), atol=2e-5, rtol=0)
    assert out["mask"].sum() > 10


def test_window_holds_exactly_the_full_frame():
    bgs, cutouts = banks(pillar=True)
    cfg = ComposeConfig(shadow_prob=0.7, relief=0.2, cast_prob=0.7, reflection_prob=0.7, camo_prob=0.7)
    p = draw(bgs, cutouts, n=24, seed=5, cfg=cfg)
    assert (p.cast > 0).any() and (p.reflection > 0).any() and ((p.cast > 0) & (p.light[:, 1] < 0)).any()
    full = composite(bgs, cutouts, p, cfg)
    win = placement_windows(cutouts, p, cfg, (H, W))
    for i in range(len(p)):
        x0, y0, x1, y1 = win[i].tolist()
        part = composite(bgs, cutouts, p.select(slice(i, i + 1)), cfg, torch.tensor([[x0, y0]]), (y1 - y0, x1 - x0))
        rest = torch.ones(H, W, dtype=torch.bool)
        rest[y0:y1, x0:x1] = False
        for k in part:
            assert torch.equal(part[k][0], full[k][i, :, y0:y1, x0:x1]), k
        # outside the window the frame is the background, untouched
        assert torch.equal(full["image"][i][:, rest], full["bg"][i][:, rest])
        assert (full["mask"][i, 0][rest] == 0).all()
        assert torch.equal(full["depth"][i, 0][rest], bgs.depth[p.bg_idx[i], 0][rest])


def test_shadow_darkens_the_floor_only_and_not_the_truth():
    bgs, cutouts = banks()
    cfg = ComposeConfig(shadow_prob=1.0, shadow_strength=(0.5, 0.5))
    p = draw(bgs, cutouts, n=16, cfg=cfg)
    lit = composite(bgs, cutouts, dataclasses.replace(p, shadow=torch.zeros(len(p))), cfg)
    shaded = composite(bgs, cutouts, p, cfg)
    assert_darkens_the_floor_only(bgs, p, lit, shaded)
    assert (shaded["image"] < lit["image"] - 0.05).any()


def assert_darkens_the_floor_only(bgs: BackgroundBank, p: Placement, lit: dict, shaded: dict) -> None:
    """`shaded` is `lit` with some floor pixels darker: the same mask and depth, nothing lighter, off the floor
    nothing changed."""
    assert torch.equal(lit["mask"], shaded["mask"]) and torch.equal(lit["depth"], shaded["depth"])
    assert (shaded["image"] <= lit["image"] + 1e-6).all()
    off_floor = ~bgs.floor[p.bg_idx].expand(-1, 3, -1, -1)
    assert torch.equal(shaded["image"][off_floor], lit["image"][off_floor])


ONLY = dict(shadow_prob=0.0, cast_prob=0.0, reflection_prob=0.0, camo_prob=0.0, shade_prob=0.0)


def test_cast_shadow_darkens_the_floor_along_the_light_and_leaves_the_truth():
    bgs, cutouts = banks()
    cfg = ComposeConfig(**{**ONLY, "cast_prob": 1.0}, cast_strength=(0.5, 0.5), cast_soft=0)
    p = draw(bgs, cutouts, n=32, seed=1, cfg=cfg)
    assert (p.cast == 0.5).all()
    p = dataclasses.replace(p, light=torch.tensor([[0.6, -0.3]]).expand(len(p), 2).contiguous())
    lit = composite(bgs, cutouts, dataclasses.replace(p, cast=torch.zeros(len(p))), cfg)
    shaded = composite(bgs, cutouts, p, cfg)
    assert_darkens_the_floor_only(bgs, p, lit, shaded)
    dark = (lit["image"] - shaded["image"]).amax(1)  # (N,H,W)
    outside = lit["mask"][:, 0] == 0
    assert (dark[outside] > 0.1).any()  # changed pixels that are not foreground
    # the shadow lies where the light throws the silhouette: below the contact (ky < 0) and to the right
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    checked = 0
    for i in range(len(p)):
        u, v = p.contact[i].tolist()
        h = float(p.height_px[i])
        if v + 0.3 * h > H - 1 or u + 0.6 * h + p.width_px[i] / 2 > W - 1 or u - p.width_px[i] / 2 < 1:
            continue  # the shadow would leave the picture
        wgt = dark[i] * outside[i]
        if wgt.sum() < 1:
            continue
        cx, cy = float((wgt * xs).sum() / wgt.sum()), float((wgt * ys).sum() / wgt.sum())
        assert cy > v and cx > u  # after the shear: shifted right and down of the contact
        assert (wgt[ys < v - 1] == 0).all()  # nothing above the contact row (in front of the object)
        checked += 1
    assert checked >= 3


def test_reflection_mirrors_the_cutout_below_the_contact():
    bgs, cutouts = banks()
    cfg = ComposeConfig(**{**ONLY, "reflection_prob": 1.0}, reflection_strength=(0.3, 0.3))
    n = 16
    g = torch.Generator().manual_seed(2)
    p = sample_placements(bgs, cutouts, torch.randint(3, (n,), generator=g), torch.zeros(n, dtype=torch.long),
                          torch.zeros(n, dtype=torch.bool), g, cfg)  # the red box
    plain = composite(bgs, cutouts, dataclasses.replace(p, reflection=torch.zeros(n)), cfg)
    glossy = composite(bgs, cutouts, p, cfg)
    assert torch.equal(plain["mask"], glossy["mask"]) and torch.equal(plain["depth"], glossy["depth"])
    diff = glossy["image"] - plain["image"]
    ys = (torch.arange(H) + 0.5).view(1, H, 1)
    below = (ys >= p.contact[:, 1].view(n, 1, 1)) & bgs.floor[p.bg_idx, 0]
    assert (diff.abs().amax(1)[~below] == 0).all()  # only the floor below the contact
    changed = diff.abs().amax(1) > 0.02
    seen = plain["mask"][:, 0][changed]  # beyond the soft bottom edge of the box, pixels that are not foreground
    assert changed.any() and (seen < 1).all() and (seen == 0).float().mean() > 0.5
    assert (diff[:, 0][changed] > diff[:, 1][changed]).float().mean() > 0.9  # it reflects the red box: redder


@pytest.mark.parametrize("patch", [False, True])
def test_camouflage_takes_the_colours_behind_the_cutout(patch):
    bgs, cutouts = banks()
    cfg = ComposeConfig(**{**ONLY, "camo_prob": 1.0}, camo_amount=(0.9, 0.9), camo_patch=float(patch))
    p = draw(bgs, cutouts, n=32, seed=3, cfg=cfg)
    assert (p.camo == 0.9).all() and (p.camo_patch == patch).all()
    plain = composite(bgs, cutouts, dataclasses.replace(p, camo=torch.zeros(len(p))), cfg)
    camo = composite(bgs, cutouts, p, cfg)
    assert torch.equal(plain["mask"], camo["mask"]) and torch.equal(plain["depth"], camo["depth"])
    inside = (plain["mask"] > 0.5).expand(-1, 3, -1, -1)
    outside = ~(plain["mask"] > 0).expand(-1, 3, -1, -1)
    assert torch.equal(plain["image"][outside], camo["image"][outside])
    err_plain = (plain["image"] - plain["bg"]).abs()[inside].mean()
    err_camo = (camo["image"] - camo["bg"]).abs()[inside].mean()
    assert err_camo < 0.6 * err_plain  # differencing sees much less of the object
    # mean-colour camouflage: the object's average colour is the background's under its box
    if not patch:
        m = plain["mask"][:, 0] > 0.99
        for i in range(len(p)):
            if m[i].sum() > 20:
                seen = camo["image"][i][:, m[i]].mean(1)
                mine = plain["image"][i][:, m[i]].mean(1)
                torch.testing.assert_close(seen, 0.1 * mine + 0.9 * p.camo_color[i], atol=0.02, rtol=0)


def test_brightness_camouflage_takes_the_brightness_behind_and_keeps_the_cutouts_colour():
    bgs, cutouts = banks()
    cfg = ComposeConfig(**{**ONLY, "camo_prob": 1.0}, camo_amount=(1.0, 1.0), camo_patch=0.0, camo_luma=1.0)
    p = draw(bgs, cutouts, n=32, seed=3, cfg=cfg)
    assert p.camo_luma.all()
    plain = composite(bgs, cutouts, dataclasses.replace(p, camo=torch.zeros(len(p))), cfg)
    camo = composite(bgs, cutouts, p, cfg)
    assert torch.equal(plain["mask"], camo["mask"]) and torch.equal(plain["depth"], camo["depth"])
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1)
    checked = 0
    for i in range(len(p)):
        m = plain["mask"][i, 0] > 0.99
        target = float((p.camo_color[i] * luma[:, 0]).sum())
        if m.sum() < 20:
            continue
        mine, seen = plain["image"][i][:, m], camo["image"][i][:, m]
        own = (mine * luma).sum(0)
        # near-black pixels are brightened only up to a cap, and no channel may pass 1
        lit = (own > 0.05) & (mine.amax(0) * target / own.clamp(min=1e-3) < 0.98)
        if lit.sum() < 10:
            continue
        torch.testing.assert_close((seen[:, lit] * luma).sum(0), torch.full((int(lit.sum()),), target),
                                   atol=0.02, rtol=0)
        chroma = lambda x: x / x.sum(0, keepdim=True)  # noqa: E731
        torch.testing.assert_close(chroma(seen[:, lit]), chroma(mine[:, lit]), atol=0.02, rtol=0)
        checked += 1
    assert checked >= 5
    # off by default: the draws, and so every composite, stay what they were
    assert not draw(bgs, cutouts, n=32, seed=3, cfg=ComposeConfig(**{**ONLY, "camo_prob": 1.0})).camo_luma.any()


def test_box_mean_colour_is_the_background_under_the_box():
    # a background whose red grows along x and green along y: the mean over a box is its centre's colour
    _, depth, floor, f = ground_plane(0)
    ramp = np.zeros((H, W, 3), np.uint8)
    ramp[..., 0] = ((np.arange(W) + 0.5) / W * 255).astype(np.uint8)[None]
    ramp[..., 1] = ((np.arange(H) + 0.5) / H * 255).astype(np.uint8)[:, None]
    bgs = BackgroundBank.from_arrays([ramp], [depth], [floor], [f])
    _, cutouts = banks()
    p = draw(bgs, cutouts, n=16, seed=6)
    for i in range(len(p)):
        x0, y0, x1, y1 = p.box[i].clamp(min=0).tolist()
        region = bgs.image[0, :, int(y0):int(np.ceil(y1)), int(x0):min(W, int(np.ceil(x1)))]
        torch.testing.assert_close(p.camo_color[i], region.float().mean((1, 2)) / 255, atol=0.03, rtol=0)
    assert p.camo_color[:, 0].std() > 0.1 and p.camo_color[:, 1].std() > 0.03  # the boxes do differ


def test_shading_lights_the_cutout_like_the_background_around_it():
    # a background brighter to the right: cutouts there are brighter, and each is lighter on its right side
    _, depth, floor, f = ground_plane(0)
    ramp = np.repeat(((np.arange(W) + 0.5) / W * 200 + 20).astype(np.uint8)[None, :, None], H, 0).repeat(3, 2)
    bgs = BackgroundBank.from_arrays([ramp], [depth], [floor], [f])
    grey = rect_cutout(40, 24, (100, 100, 100))
    cutouts = CutoutBank.from_rgba([grey], [1.0], size=32)
    cfg = ComposeConfig(**{**ONLY, "shade_prob": 1.0}, shade_top=(0.1, 0.1))
    n = 64
    g = torch.Generator().manual_seed(0)
    p = sample_placements(bgs, cutouts, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                          torch.zeros(n, dtype=torch.bool), g, cfg)
    u = p.contact[:, 0]
    assert torch.corrcoef(torch.stack([u, p.fg_gain]))[0, 1] > 0.8  # brighter where the room is
    assert (p.fg_tilt[:, 0] > 0).float().mean() > 0.8 and (p.fg_tilt[:, 1] == 0.1).all()
    lo, hi = cfg.shade_gain
    assert ((p.fg_gain >= lo) & (p.fg_gain <= hi)).all()
    plain = composite(bgs, cutouts, dataclasses.replace(p, fg_gain=torch.ones(n), fg_tilt=torch.zeros(n, 2)), cfg)
    lit = composite(bgs, cutouts, p, cfg)
    assert torch.equal(plain["mask"], lit["mask"]) and torch.equal(plain["depth"], lit["depth"])
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    for i in range(n):
        solid = (plain["mask"][i, 0] == 1) & (plain["image"][i, 0] > 0.3)
        if solid.sum() < 10:
            continue
        across = (xs - u[i]) / (p.width_px[i] / 2)
        up = (p.contact[i, 1] - ys) / p.height_px[i] * 2 - 1
        expected = p.fg_gain[i] * (1 + p.fg_tilt[i, 0] * across + p.fg_tilt[i, 1] * up)
        ratio = lit["image"][i, 0][solid] / plain["image"][i, 0][solid]
        torch.testing.assert_close(ratio, expected[solid].clamp(max=1 / plain["image"][i, 0][solid]), atol=0.01,
                                   rtol=0)


def test_placements_and_composites_are_seeded():
    bgs, cutouts = banks()
    cfg = ComposeConfig(cast_prob=0.5, reflection_prob=0.5, camo_prob=0.5)
    a, b, c = (composite(bgs, cutouts, draw(bgs, cutouts, n=12, seed=s, cfg=cfg), cfg) for s in (4, 4, 5))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["image"], c["image"])


def test_placement_follows_perspective_and_stands_on_the_floor():
    bgs, cutouts = banks()
    cfg = ComposeConfig()
    p = draw(bgs, cutouts, n=200, cfg=cfg)
    u, v = p.contact.unbind(1)
    col, row = (u - 0.5).long(), (v - 0.5).long()
    assert bgs.floor[p.bg_idx, 0, row, col].all()
    assert torch.equal(p.contact_depth, bgs.depth[p.bg_idx, 0, row, col])
    perspective = bgs.focal_px[p.bg_idx] * cutouts.height_m[p.fg_idx] / p.contact_depth
    ratio = p.height_px / perspective
    clamped = (p.height_px <= cfg.min_height * H + 1e-4) | (p.height_px >= cfg.max_height * H - 1e-4)
    assert ((ratio[~clamped] >= 0.85 - 1e-5) & (ratio[~clamped] <= 1.15 + 1e-5)).all()
    torch.testing.assert_close(p.width_px, p.height_px * cutouts.aspect[p.fg_idx])
    box = p.box
    torch.testing.assert_close((box[:, 0] + box[:, 2]) / 2, u)
    assert torch.equal(box[:, 3], v)


def test_relief_stays_in_front_of_the_background():
    bgs, cutouts = banks()
    cfg = ComposeConfig(relief=0.5)
    p = draw(bgs, cutouts, n=16, cfg=cfg)
    out = composite(bgs, cutouts, p, cfg)
    inside = out["mask"] >= 0.5
    contact = p.contact_depth.view(-1, 1, 1, 1).expand_as(out["depth"])
    assert (out["depth"][inside] <= contact[inside]).all()
    assert (out["depth"][inside] < contact[inside] - 1e-3).any()
    assert (out["depth"] <= bgs.depth[p.bg_idx]).all()


def test_photo_without_depth_places_on_the_nominal_floor_and_marks_depth_unknown():
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    _, floor, focal = nominal_ground((H, W))
    bgs = BackgroundBank.from_arrays([image], [np.zeros((H, W), np.float32)], [floor], [focal])
    _, cutouts = banks()
    p = draw(bgs, cutouts, n=8)
    assert not p.depth_known.any() and (p.contact_depth > 0).all()
    out = composite(bgs, cutouts, p, ComposeConfig())
    assert (out["depth"] == 0).all() and (out["depth_valid"] == 0).all()
    assert out["mask"].sum() > 0


def test_cutout_bank_cells_and_mips():
    _, cutouts = banks()
    assert cutouts.rgba.shape == (3, 4, 32, 32)
    assert cutouts.levels == 3  # 32, 16, 8
    torch.testing.assert_close(cutouts.aspect, torch.tensor([20 / 40, 36 / 20, 30 / 50]))
    # premultiplied: colour never exceeds alpha; the tall red box fills the cell's height
    rgba = cutouts.rgba
    assert (rgba[:, :3] <= rgba[:, 3:] + 1e-6).all()
    assert rgba[0, 3, :, 16].min() > 0.4 and rgba[0, 3, 16, 0] == 0


def test_capture_identity_when_off_and_seeded_when_on():
    x = torch.rand(4, 3, 40, 56)
    assert torch.equal(apply_capture(x, CaptureConfig.off(), torch.Generator().manual_seed(0)), x)
    on = CaptureConfig(**{k: 1.0 for k in CaptureConfig.__dataclass_fields__ if k.endswith("_p")})
    a = apply_capture(x, on, torch.Generator().manual_seed(1))
    b = apply_capture(x, on, torch.Generator().manual_seed(1))
    c = apply_capture(x, on, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert (a - x).abs().mean() > 0.01


def test_capture_only_touches_the_samples_drawn():
    x = torch.rand(16, 3, 32, 32)
    for on in ("shift_p", "rotate_p", "scale_p", "contrast_p", "gamma_p", "noise_p", "jpeg_p"):
        cfg = dataclasses.replace(CaptureConfig.off(), **{on: 0.5})
        y = apply_capture(x, cfg, torch.Generator().manual_seed(0))
        same = (y == x).flatten(1).all(dim=1)
        assert same.any() and (~same).any(), on


def _fit_plane(img: torch.Tensor, margin: int) -> tuple[float, float, float]:
    """Least-squares a + b*x + c*y over the interior pixels (centres) of a (H,W) picture -> (b, c, rms residual)."""
    h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    sl = (slice(margin, h - margin), slice(margin, w - margin))
    a = torch.stack([torch.ones_like(xs[sl]), xs[sl], ys[sl]], -1).reshape(-1, 3)
    z = img[sl].double().reshape(-1, 1)
    coef = torch.linalg.lstsq(a, z).solution[:, 0]
    return float(coef[1]), float(coef[2]), float((a @ coef[:, None] - z).pow(2).mean().sqrt())


def test_capture_rotation_and_scale_move_pixels_like_a_turned_camera():
    # on a linear ramp bilinear sampling is exact, so the warped picture is the ramp seen through the inverse
    # transform: f(x) = x/W becomes (cos(a) x + sin(a) y) / (s W) + const
    h, w = 40, 56
    ramp = ((torch.arange(w) + 0.5) / w).view(1, 1, 1, w).expand(8, 3, h, w).contiguous()
    angle = torch.tensor([0.0, 0.01, -0.01, 0.0, 0.0, 0.008, 0.0, 0.0])
    scale = torch.tensor([1.0, 1.0, 1.0, 1.01, 0.99, 1.005, 1.0, 1.0])
    shift = torch.tensor([[0.0, 0.0]] * 6 + [[2.0, 0.0], [-1.5, 3.0]])
    from maskdepth.data.capture import warp

    out = warp(ramp, shift, angle, scale)
    for i, (a, s) in enumerate(zip(angle.tolist(), scale.tolist())):
        gx, gy, res = _fit_plane(out[i, 0], margin=4)
        assert res < 1e-5
        assert gx == pytest.approx(math.cos(a) / s / w, rel=1e-4)
        assert gy == pytest.approx(math.sin(a) / s / w, rel=1e-3, abs=1e-7)
    # the shifts: content moves by +shift, so the ramp's value at a pixel is that of the pixel `shift` before it
    torch.testing.assert_close(out[6, 0, :, 10:40], ramp[6, 0, :, 8:38])
    # the centre stays put under rotation and zoom
    torch.testing.assert_close(out[1:6, :, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].mean((2, 3)),
                               ramp[1:6, :, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].mean((2, 3)), atol=2e-3,
                               rtol=0)


def test_capture_draws_rotations_and_zooms_within_the_configured_bounds():
    h, w = 40, 56
    ramp = ((torch.arange(w) + 0.5) / w).view(1, 1, 1, w).expand(64, 3, h, w).contiguous()
    cfg = dataclasses.replace(CaptureConfig.off(), rotate_p=1.0, rotate_deg=1.0, scale_p=1.0, scale=0.01)
    out = apply_capture(ramp, cfg, torch.Generator().manual_seed(0))
    angles, zooms = [], []
    for i in range(64):
        gx, gy, res = _fit_plane(out[i, 0], margin=4)
        assert res < 1e-5
        zoom = 1 / (w * math.hypot(gx, gy))
        angles.append(math.degrees(math.atan2(gy, gx)))
        zooms.append(zoom)
    assert max(map(abs, angles)) <= 1.0 + 1e-3 and max(angles) > 0.5 and min(angles) < -0.5
    assert 0.99 - 1e-4 <= min(zooms) and max(zooms) <= 1.01 + 1e-4 and max(zooms) - min(zooms) > 0.01


def test_default_capture_nudges_the_camera_by_pixels_at_192():
    # a vertical edge: where it lands after the capture tells the horizontal shift of each sample
    n, size = 200, 192
    x = (torch.arange(size) >= size // 2).float().view(1, 1, 1, size).expand(n, 3, size, size).contiguous()
    cfg = dataclasses.replace(CaptureConfig(), rotate_p=0, scale_p=0, exposure_p=0, white_balance_p=0,
                              contrast_p=0, gamma_p=0, noise_p=0, jpeg_p=0)
    out = apply_capture(x, cfg, torch.Generator().manual_seed(0))
    moved = (out[:, 0] - x[:, 0]).abs().sum(2).mean(1)  # mean |shift_x| in pixels along each row
    assert ((moved >= 1) & (moved <= 3 + 1e-4)).float().mean() > 0.4


def test_capture_colour_jitter_changes_exposure_contrast_and_gamma():
    x = torch.rand(32, 3, 24, 24) * 0.8 + 0.1
    for field, lo_hi in (("exposure", (0.8, 0.8)), ("contrast", (1.2, 1.2)), ("gamma", (1.3, 1.3))):
        cfg = dataclasses.replace(CaptureConfig.off(), **{f"{field}_p": 1.0, field: lo_hi})
        y = apply_capture(x, cfg, torch.Generator().manual_seed(0))
        if field == "exposure":
            torch.testing.assert_close(y, x * 0.8)
        elif field == "contrast":
            m = x.mean((1, 2, 3), keepdim=True)
            torch.testing.assert_close(y, ((x - m) * 1.2 + m).clamp(0, 1))
        else:
            torch.testing.assert_close(y, x ** 1.3)


def test_jpeg_roundtrip_resembles_a_real_codec():
    base = np.random.default_rng(0).random((6, 8, 3))
    img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((64, 48), Image.BICUBIC))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    for q in (60, 90):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        real = np.asarray(Image.open(buf)).astype(np.float32)
        ours = jpeg_roundtrip(x, torch.tensor([float(q)]))[0].permute(1, 2, 0).numpy() * 255
        err_real = np.sqrt(((real - img) ** 2).mean())
        err_ours = np.sqrt(((ours - img) ** 2).mean())
        assert 0.5 * err_real < err_ours < 2 * err_real + 0.5
        assert np.sqrt(((ours - real) ** 2).mean()) < 3.0


def test_effects_on_a_subset_equal_effects_on_every_sample(monkeypatch):
    # the CPU computes shadows, reflections and camouflage only where they are on; a GPU computes them for every
    # sample (strength 0 where off): both must give the same bits
    import maskdepth.data.compose as compose

    bgs, cutouts = banks(pillar=True)
    cfg = ComposeConfig(cast_prob=0.5, reflection_prob=0.5, camo_prob=0.5, shadow_prob=0.5)
    p = draw(bgs, cutouts, n=24, seed=9, cfg=cfg)
    subset = composite(bgs, cutouts, p, cfg)
    monkeypatch.setattr(compose, "_drawn", lambda on: None)
    every = composite(bgs, cutouts, p, cfg)
    assert all(torch.equal(subset[k], every[k]) for k in subset)


def test_camera_response_is_the_same_on_both_captures():
    x = torch.rand(16, 3, 32, 40) * 0.7 + 0.15
    cfg = dataclasses.replace(CaptureConfig.off(), gradient_p=1.0, vignette_p=1.0, clip_exposure_p=1.0, blur_p=1.0,
                              camera_jpeg_p=1.0)
    from maskdepth.data.capture import apply_camera

    image, bg = apply_camera(x, x.clone(), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(image, bg)  # one camera: the same scene gives the same pictures
    assert (image - x).abs().mean() > 0.02
    again = apply_camera(x, x.clone(), cfg, torch.Generator().manual_seed(0))[0]
    assert torch.equal(image, again)
    noisy = dataclasses.replace(cfg, sensor_noise_p=1.0, sensor_noise=(0.02, 0.02))
    image, bg = apply_camera(x, x.clone(), noisy, torch.Generator().manual_seed(0))
    assert 0.01 < (image - bg).std() < 0.05  # each capture has its own noise
    assert torch.equal(apply_camera(x, x, CaptureConfig.off(), None)[0], x)


def test_camera_gradient_vignette_and_clipping_shape_the_gain():
    flat = torch.full((64, 3, 33, 33), 0.5)
    from maskdepth.data.capture import apply_camera

    vig = dataclasses.replace(CaptureConfig.off(), vignette_p=1.0, vignette=0.4)
    out = apply_camera(flat, flat, vig, torch.Generator().manual_seed(0))[0][:, 0]
    centre, corner = out[:, 16, 16], out[:, 0, 0]
    assert (centre > 0.499).all() and (corner < centre).all() and corner.min() < 0.35
    grad = dataclasses.replace(CaptureConfig.off(), gradient_p=1.0, gradient=0.3)
    out = apply_camera(flat, flat, grad, torch.Generator().manual_seed(0))[0][:, 0]
    spread = out.amax((1, 2)) - out.amin((1, 2))
    assert spread.max() > 0.2 and spread.max() <= 0.5 * 0.6 * math.sqrt(2) + 1e-4
    torch.testing.assert_close(out.mean((1, 2)), torch.full((64,), 0.5), atol=2e-3, rtol=0)  # a tilt, not a gain
    over = dataclasses.replace(CaptureConfig.off(), clip_exposure_p=1.0, clip_exposure=(1.8, 1.8))
    bright = apply_camera(torch.full((2, 3, 8, 8), 0.7), torch.zeros(2, 3, 8, 8), over, None)[0]
    assert (bright == 1).all()  # over-exposed: clipped


def test_camera_blur_spreads_a_point():
    x = torch.zeros(4, 3, 15, 15)
    x[:, :, 7, 7] = 1
    from maskdepth.data.capture import apply_camera

    cfg = dataclasses.replace(CaptureConfig.off(), blur_p=1.0, blur_sigma=(0.8, 0.8))
    out = apply_camera(x, x, cfg, None)[0]
    torch.testing.assert_close(out.sum((2, 3)), torch.ones(4, 3))  # energy kept
    assert (out[:, :, 7, 7] < 0.5).all() and (out[:, :, 7, 8] > 0.05).all()
