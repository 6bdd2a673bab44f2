import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskdepth.errors import UserError
from maskdepth.losses import (
    DEPTH_TERMS,
    MASK_TERMS,
    CombinedLoss,
    LossWeights,
    bce_loss,
    boundary_band,
    dice_loss,
    edge_bce_loss,
    gradient_loss,
    l1_loss,
    log_gradient_loss,
    silog_loss,
    smooth_l1_loss,
    ssim_loss,
    thin_bce_loss,
    thin_parts,
)

N, H, W = 3, 32, 40
DEPTH_MAX = 10.0


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    blobs = F.avg_pool2d(torch.randn(N, 1, H, W, generator=g), 5, stride=1, padding=2) * 5
    batch = {
        "mask": torch.sigmoid(4 * blobs),
        "depth": torch.rand(N, 1, H, W, generator=g) * 9 + 0.5,
        "depth_valid": (torch.rand(N, 1, H, W, generator=g) > 0.2).float(),
    }
    mask_logits = 3 * blobs + torch.randn(N, 1, H, W, generator=g)
    depth = batch["depth"] * (1 + 0.2 * torch.randn(N, 1, H, W, generator=g))
    return mask_logits, depth, batch


def only(term: str) -> LossWeights:
    return LossWeights(**{name: (1.0 if name == term else 0.0) for name in MASK_TERMS + DEPTH_TERMS})


def test_simple_terms_match_plain_formulas():
    logits, depth, batch = make_batch()
    valid = batch["depth_valid"]
    p, t, v = (depth / DEPTH_MAX).numpy(), (batch["depth"] / DEPTH_MAX).numpy(), valid.numpy() > 0.5
    assert l1_loss(depth / DEPTH_MAX, batch["depth"] / DEPTH_MAX, valid).item() == pytest.approx(
        np.abs(p - t)[v].mean(), rel=1e-5)
    d = np.abs(p - t)[v]
    huber = np.where(d < 0.1, 0.5 * d**2 / 0.1, d - 0.05).mean()
    assert smooth_l1_loss(depth / DEPTH_MAX, batch["depth"] / DEPTH_MAX, valid).item() == pytest.approx(huber, rel=1e-5)

    x, y = logits.numpy().astype(np.float64), batch["mask"].numpy().astype(np.float64)
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    assert bce_loss(logits, batch["mask"]).item() == pytest.approx(bce.mean(), rel=1e-5)
    assert bce_loss(logits, batch["mask"], valid).item() == pytest.approx(bce[v].mean(), rel=1e-5)
    prob = 1 / (1 + np.exp(-x))
    dice = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
    assert dice_loss(logits, batch["mask"]).item() == pytest.approx(dice.mean(), rel=1e-5)


def test_gradient_loss_matches_numpy_sobel():
    _, depth, batch = make_batch(1)
    p, t = (depth / DEPTH_MAX).double().numpy()[:, 0], (batch["depth"] / DEPTH_MAX).double().numpy()[:, 0]

    def sobel(img):  # normalised Sobel (sum of |weights| = 8), replicate border
        a = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
        win = np.lib.stride_tricks.sliding_window_view(a, (3, 3), axis=(1, 2))
        kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        return (win * kx).sum((-1, -2)), (win * kx.T).sum((-1, -2))

    (pxx, pyy), (txx, tyy) = sobel(p), sobel(t)
    expected = (np.abs(pxx - txx) + np.abs(pyy - tyy)).mean()
    got = gradient_loss(depth / DEPTH_MAX, batch["depth"] / DEPTH_MAX).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_silog_matches_formula_and_forgives_most_of_a_scale_error():
    _, depth, batch = make_batch(3)
    valid = batch["depth_valid"]
    p, t = depth / DEPTH_MAX, batch["depth"] / DEPTH_MAX
    g = (np.log(p.double().numpy().clip(0) + 1e-3) - np.log(t.double().numpy() + 1e-3))[:, 0]
    v = valid.numpy()[:, 0] > 0.5
    expected = np.mean([np.sqrt((gi[vi] ** 2).mean() - 0.85 * gi[vi].mean() ** 2) for gi, vi in zip(g, v)])
    assert silog_loss(p, t, valid).item() == pytest.approx(expected, rel=1e-4)
    assert silog_loss(t, t, valid).item() == pytest.approx(0.0, abs=1e-3)
    # a right shape 30% too deep keeps sqrt(1 - 0.85) of its log error; the same mean error spread unevenly, more
    scaled, warped = t * 1.3, t * (1 + 0.6 * torch.rand_like(t))
    assert silog_loss(scaled, t, valid).item() == pytest.approx(0.15**0.5 * np.log(1.3), rel=0.02)
    assert silog_loss(scaled, t, valid) < silog_loss(warped, t, valid)
    assert silog_loss(scaled, t, valid, lam=1.0).item() == pytest.approx(0.0, abs=1e-3)


def _floor(slope: float) -> torch.Tensor:
    """(1,1,32,32) depth / depth_max of a floor seen by a level camera: 1 / depth grows linearly down the rows."""
    rows = torch.arange(32, dtype=torch.float32)[:, None].expand(32, 32)
    return (1.0 / (1.0 + slope * rows))[None, None] * 0.5


def test_log_gradient_forgives_a_scale_and_charges_a_tilt():
    t = _floor(0.1)
    assert log_gradient_loss(t, t).item() == 0
    assert log_gradient_loss(1.4 * t, t).item() == pytest.approx(0.0, abs=1e-3)  # one scale: nothing to charge
    tilted = _floor(0.13)  # the same floor seen at another slope: depth off by a factor that changes per row
    assert log_gradient_loss(tilted, t) > 20 * log_gradient_loss(1.4 * t, t) + 1e-3
    # its value is the mean |step of log(pred / target)| averaged over the scales, here all vertical
    r = torch.log(tilted + 1e-3) - torch.log(t + 1e-3)
    one_scale = (r[..., 1:, :] - r[..., :-1, :]).abs().sum() / (2 * 32 * 31)
    assert log_gradient_loss(tilted, t, scales=1).item() == pytest.approx(one_scale.item(), rel=1e-5)


def test_ssim_of_image_with_itself_is_zero_loss():
    x = torch.rand(2, 1, 32, 32)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    assert 0 < ssim_loss(noisy, x).item() < ssim_loss(1 - x, x).item() <= 1


def test_invalid_pixels_neither_count_nor_get_gradient():
    _, depth, batch = make_batch(2)
    valid = batch["depth_valid"]
    pred = (depth / DEPTH_MAX).requires_grad_()
    target = batch["depth"] / DEPTH_MAX
    changed = torch.where(valid > 0.5, pred.detach(), torch.rand_like(target))
    for fn in (l1_loss, smooth_l1_loss, ssim_loss, gradient_loss, silog_loss, log_gradient_loss):
        assert fn(pred, target, valid).item() == pytest.approx(fn(changed, target, valid).item(), rel=1e-6)
        (grad,) = torch.autograd.grad(fn(pred, target, valid), pred)
        assert grad[valid == 0].abs().max() == 0
        assert grad[valid == 1].abs().max() > 0


@pytest.mark.parametrize("term", MASK_TERMS + DEPTH_TERMS)
def test_every_term_sends_gradient_to_its_head(term):
    logits, depth, batch = make_batch(3)
    logits.requires_grad_()
    depth.requires_grad_()
    total, terms = CombinedLoss(only(term), DEPTH_MAX)(logits, depth, batch)
    total.backward()
    assert set(terms) == {term, "mask", "depth", "total"}
    grad = logits.grad if term in MASK_TERMS else depth.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_thin_parts_are_what_the_coarse_grid_cannot_hold():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:16, 4:16] = 1.0  # a body: 12 px wide
    mask[..., 20:22, 2:30] = 1.0  # a rim: 2 px wide
    thin = thin_parts(mask)
    assert thin[..., 20:22, 2:30].min() == 1 and thin[..., 19, 10] == 1 and thin[..., 22, 10] == 1  # and beside it
    assert thin[..., 4:16, 4:16].sum() == 0 and thin[..., 26:, :].sum() == 0
    logits = torch.where(mask > 0.5, 4.0, -4.0)
    missed = logits.clone()
    missed[..., 20:22, 2:30] = -4.0  # the body found, the rim missed
    assert thin_bce_loss(missed, mask) > 10 * thin_bce_loss(logits, mask)
    assert bce_loss(missed, mask) < thin_bce_loss(missed, mask) / 5  # plain BCE barely notices
    assert thin_bce_loss(logits, torch.zeros_like(mask)) == 0  # nothing thin: no loss


def test_boundary_band_is_the_ring_either_side_of_the_edge():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    band = boundary_band(mask)
    assert band[..., 8, 8:24].min() == 1 and band[..., 7, 8:24].min() == 1  # inside and outside the top edge
    assert band[..., 9:23, 9:23].sum() == 0 and band[..., :7, :].sum() == 0  # not the body, not far outside
    assert band.sum() == 16 * 16 - 14 * 14 + 18 * 18 - 16 * 16
    logits = torch.where(mask > 0.5, 4.0, -4.0)
    grown = logits.clone()
    grown[..., 7:25, 7:25] = 4.0  # one pixel too wide all round
    assert edge_bce_loss(grown, mask) > 10 * edge_bce_loss(logits, mask)
    assert bce_loss(grown, mask) < edge_bce_loss(grown, mask) / 5  # plain BCE barely notices
    assert edge_bce_loss(logits, torch.zeros_like(mask)) == 0  # no edge: no loss


def test_combined_total_is_the_weighted_sum_of_terms():
    logits, depth, batch = make_batch(4)
    w = LossWeights(bce=0.5, dice=2.0, mask_thin=0.4, mask_edge=0.2, mask_ssim=0.3, depth_l1=0.1,
                    depth_smooth_l1=0.7, depth_ssim=1.0, depth_grad=1.5, depth_silog=0.6, depth_loggrad=0.8,
                    mask_weight=2.0, depth_weight=0.25)
    total, t = CombinedLoss(w, DEPTH_MAX)(logits, depth, batch)
    mask = 0.5 * t["bce"] + 2.0 * t["dice"] + 0.4 * t["mask_thin"] + 0.2 * t["mask_edge"] + 0.3 * t["mask_ssim"]
    dep = (0.1 * t["depth_l1"] + 0.7 * t["depth_smooth_l1"] + t["depth_ssim"] + 1.5 * t["depth_grad"]
           + 0.6 * t["depth_silog"] + 0.8 * t["depth_loggrad"])
    assert t["mask"].item() == pytest.approx(mask.item(), rel=1e-6)
    assert t["depth"].item() == pytest.approx(dep.item(), rel=1e-6)
    assert total.item() == pytest.approx(2.0 * mask.item() + 0.25 * dep.item(), rel=1e-6)
    assert all(not v.requires_grad for v in t.values())


def test_defaults_are_bce_dice_and_densedepth_terms():
    logits, depth, batch = make_batch(5)
    _, terms = CombinedLoss(LossWeights(), DEPTH_MAX)(logits, depth, batch)
    assert set(terms) == {"bce", "dice", "depth_l1", "depth_ssim", "depth_grad", "mask", "depth", "total"}


def test_depth_terms_are_scale_free():
    logits, depth, batch = make_batch(6)
    w = LossWeights(depth_smooth_l1=1.0, depth_silog=1.0, depth_loggrad=1.0)
    _, a = CombinedLoss(w, DEPTH_MAX)(logits, depth, batch)
    scaled = dict(batch, depth=batch["depth"] * 100)
    _, b = CombinedLoss(w, DEPTH_MAX * 100)(logits, depth * 100, scaled)
    for name in DEPTH_TERMS:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-4)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_finite_on_uniform_masks_and_no_valid_depth(fill):
    logits, depth, batch = make_batch(7)
    batch = dict(batch, mask=torch.full_like(batch["mask"], fill), depth_valid=torch.zeros_like(batch["mask"]))
    logits.requires_grad_()
    depth.requires_grad_()
    w = LossWeights(mask_ssim=1.0, depth_smooth_l1=1.0)
    total, terms = CombinedLoss(w, DEPTH_MAX)(logits, depth, batch)
    total.backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["depth"].item() == 0.0
    assert torch.isfinite(logits.grad).all() and torch.isfinite(depth.grad).all()
    assert depth.grad.abs().sum() == 0


def test_bf16_inputs_under_autocast_give_finite_float32_loss():
    logits, depth, batch = make_batch(8)
    logits = logits.bfloat16().requires_grad_()
    depth = depth.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = CombinedLoss(LossWeights(mask_ssim=1.0, depth_smooth_l1=1.0), DEPTH_MAX)(logits, depth, batch)
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(torch.isfinite(v) for v in terms.values())
    assert logits.grad.abs().sum() > 0 and depth.grad.abs().sum() > 0


def test_bad_weights_and_depth_max_are_user_errors():
    with pytest.raises(UserError, match=r"\[loss\] dice"):
        LossWeights(dice=-1.0)
    with pytest.raises(UserError, match="nan"):
        LossWeights(bce=float("nan"))
    with pytest.raises(UserError, match="every weight is 0"):
        LossWeights(mask_weight=0.0, depth_weight=0.0)
    with pytest.raises(UserError, match="depth_max"):
        CombinedLoss(LossWeights(), 0.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_matches_cpu():
    logits, depth, batch = make_batch(9)
    loss = CombinedLoss(LossWeights(mask_ssim=1.0, depth_smooth_l1=1.0), DEPTH_MAX)
    _, cpu = loss(logits, depth, batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, gpu = loss(logits.cuda().bfloat16(), depth.cuda().bfloat16(), {k: v.cuda() for k, v in batch.items()})
    for name, value in cpu.items():
        assert gpu[name].dtype == torch.float32
        assert gpu[name].item() == pytest.approx(value.item(), rel=0.02, abs=1e-3), name
