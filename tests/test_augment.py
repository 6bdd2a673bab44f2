"""Joint augmentation keeps bg, image, mask and depth aligned; light changes are shared; resizing is clean."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskdepth.data.augment import (
    AugmentConfig,
    Draw,
    _smooth,
    apply_draws,
    augment_batch,
    resize_batch,
    sampling_grid,
)

NO_LIGHT = dict(photometric=0.0)


def blocky_batch(n: int = 6, size: int = 48, block: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """image channel 0 == mask (0/255 blocks), bg channel 0 == its complement, depth = 1 + 2 * mask."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(n, 1, size // block, size // block, generator=g) > 0.5).to(torch.uint8)
    m = m.repeat_interleave(block, 2).repeat_interleave(block, 3) * 255
    other = torch.randint(0, 256, (n, 2, size, size), generator=g, dtype=torch.uint8)
    image = torch.cat([m, other], 1)
    bg = torch.cat([255 - m, other.flip(1)], 1)
    # channels-last uint8, as the loader hands them over
    return {"image": image.contiguous(memory_format=torch.channels_last),
            "bg": bg.contiguous(memory_format=torch.channels_last), "mask": m,
            "depth": 1.0 + 2.0 * (m.float() / 255)}


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one value, not on the picture's border (which may blend with what a
    rotation brought in from outside)."""
    lo = -F.max_pool2d(-mask, 3, 1, 1)
    hi = F.max_pool2d(mask, 3, 1, 1)
    out = lo == hi
    out[..., [0, -1], :] = False
    out[..., :, [0, -1]] = False
    return out


def check_aligned(out: dict[str, torch.Tensor], exact: bool) -> None:
    img0, mask, depth, bg0 = out["image"][:, :1], out["mask"], out["depth"], out["bg"][:, :1]
    # image channel 0 and mask are resampled together: always identical
    assert torch.equal(img0, mask)
    inside = out["depth_valid"] > 0
    # depth is nearest: only values that exist in the input (0 outside a rotated picture)
    assert set(depth[inside].unique().tolist()) <= {1.0, 3.0}
    assert torch.equal(out["depth_valid"], (depth > 0).float())
    if exact:
        assert torch.equal(depth, 1 + 2 * mask)
        assert torch.allclose(bg0, 1 - mask, atol=1e-6)
    else:
        core = interior(mask) & interior(out["depth_valid"]) & inside  # away from block and picture edges
        assert core.float().mean() > 0.25  # the check is not vacuous
        assert torch.allclose(depth[core], 1 + 2 * mask[core], atol=1e-6)
        assert torch.allclose(bg0[core], 1 - mask[core], atol=1e-6)
        near = interior(out["depth_valid"]) & inside
        assert ((bg0 + mask - 1).abs()[near] <= 1.5 / 255).all()  # bg had the same geometry everywhere


def test_flips_and_integer_crops_are_exact():
    b = blocky_batch()
    draws = [Draw((8, 8, 40, 40), flip=True), Draw((5, 3, 40, 40)), Draw((8, 0, 40, 40), flip=True),
             Draw((0, 8, 40, 40)), Draw((1, 1, 40, 40), flip=True), Draw((0, 0, 40, 40))]
    out = apply_draws(b, draws, 40)
    check_aligned(out, exact=True)
    for i, d in enumerate(draws):
        x0, y0, w, h = d.box
        want = b["mask"][i, :, y0:y0 + h, x0:x0 + w].float() / 255
        assert torch.equal(out["mask"][i], want.flip(-1) if d.flip else want)
    flipped = apply_draws(b, [Draw((0, 0, 48, 48), flip=True)] * 6, 48)  # no resampling at all
    check_aligned(flipped, exact=True)
    assert torch.allclose(flipped["bg"], b["bg"].flip(-1).float() / 255, atol=1e-6)


def test_random_crops_and_rotations_stay_aligned():
    b = blocky_batch()
    g = torch.Generator().manual_seed(1)
    check_aligned(augment_batch(b, AugmentConfig(crop=1.0, **NO_LIGHT), 40, g), exact=False)
    check_aligned(augment_batch(b, AugmentConfig(crop=1.0, rotate=1.0, rotate_deg=10, **NO_LIGHT), 40, g),
                  exact=False)
    check_aligned(augment_batch(blocky_batch(block=16), AugmentConfig(crop=1.0, crop_scale=(0.9, 1.0), **NO_LIGHT),
                                24, g), exact=False)  # shrinking: antialiased


def test_fast_path_matches_the_sampling_grid():
    """Crop+interpolate+flip and grid_sample with sampling_grid() sample the same positions (rotation uses it).
    Only the outermost ring differs: interpolate repeats the crop's edge, grid_sample reads the pixels beyond it."""
    x = torch.rand(1, 4, 30, 36)
    for d in (Draw((3, 2, 20, 24)), Draw((0, 5, 36, 25), flip=True), Draw((7, 0, 29, 30), flip=True)):
        fast = _smooth(x, d, (40, 44))
        grid = F.grid_sample(x, sampling_grid(d, (30, 36), (40, 44)), mode="bilinear", align_corners=False)
        assert torch.allclose(fast[..., 1:-1, 1:-1], grid[..., 1:-1, 1:-1], atol=1e-5)


def test_light_change_is_the_same_for_bg_and_image():
    b = blocky_batch()
    b["bg"] = b["image"].clone()
    cfg = AugmentConfig(photometric=1.0, brightness=0.3, contrast=0.3, saturation=0.5, white_balance=0.1)
    out = augment_batch(b, cfg, 48, torch.Generator().manual_seed(2))
    assert torch.equal(out["bg"], out["image"])
    plain = resize_batch(b, 48)
    assert (out["image"] - plain["image"]).abs().amax(dim=(1, 2, 3)).min() > 0.01  # every sample changed
    assert out["image"].min() >= 0 and out["image"].max() <= 1


def test_seeded_and_float_inputs():
    b = blocky_batch()
    cfg = AugmentConfig(rotate=0.5)
    a1 = augment_batch(b, cfg, 32, torch.Generator().manual_seed(5))
    a2 = augment_batch(b, cfg, 32, torch.Generator().manual_seed(5))
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    fb = {k: (v.float() / 255 if v.dtype == torch.uint8 else v) for k, v in b.items()}
    f1 = augment_batch(fb, cfg, 32, torch.Generator().manual_seed(5))
    for k in a1:
        assert f1[k].dtype == torch.float32 and f1[k].is_contiguous()
        assert (f1[k] - a1[k]).abs().max() <= 1.5 / 255 if k != "depth" else torch.equal(f1[k], a1[k])


def test_resize_is_antialiased_and_depth_nearest():
    n, s = 2, 32
    checker = ((torch.arange(s)[:, None] + torch.arange(s)[None]) % 2).to(torch.uint8) * 255
    img = checker.expand(n, 3, s, s).contiguous()
    depth = 1.0 + (checker.float() / 255).expand(n, 1, s, s)
    out = resize_batch({"image": img, "bg": img, "mask": checker.expand(n, 1, s, s), "depth": depth}, 16)
    assert out["image"].shape == (n, 3, 16, 16)
    assert (out["image"] - 0.5).abs().max() < 0.02 and (out["mask"] - 0.5).abs().max() < 0.02
    assert set(out["depth"].unique().tolist()) <= {1.0, 2.0}
    same = resize_batch({"image": img, "bg": img, "mask": checker.expand(n, 1, s, s), "depth": depth}, s)
    assert torch.equal(same["image"], img.float() / 255) and torch.equal(same["depth"], depth)
