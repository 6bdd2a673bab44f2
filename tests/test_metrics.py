import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

from maskdepth.errors import UserError
from maskdepth.metrics import METRIC_NAMES, Metrics, align_scale_shift

H, W = 24, 28
DEPTH_MAX = 10.0


def make_data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Blob-shaped soft masks with noisy logits; depth with holes (valid = 0) and unknown zeros."""
    g = torch.Generator().manual_seed(seed)
    blobs = F.avg_pool2d(torch.randn(n, 1, H, W, generator=g), 5, stride=1, padding=2) * 5
    target = torch.rand(n, 1, H, W, generator=g) * 9 + 0.5
    target[torch.rand(n, 1, H, W, generator=g) < 0.05] = 0.0
    batch = {
        "mask": torch.sigmoid(4 * blobs),
        "depth": target,
        "depth_valid": (torch.rand(n, 1, H, W, generator=g) > 0.2).float(),
    }
    logits = 3 * blobs + torch.randn(n, 1, H, W, generator=g)
    depth = target * (1 + 0.3 * torch.randn(n, 1, H, W, generator=g)) + 0.1  # a few negatives too
    return logits, depth, batch


def windows(a: np.ndarray, k: int, pad_mode: str, **kw) -> np.ndarray:
    p = k // 2
    padded = np.pad(a, ((0, 0), (p, p), (p, p)), mode=pad_mode, **kw)
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))


def np_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM map, 11x11 Gaussian (sigma 1.5) with reflect padding, for images in [0, 1]."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    kernel = np.outer(g, g)

    def blur(a):
        return (windows(a, 11, "reflect") * kernel).sum((-1, -2))

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2) + 1e-12)


def np_boundary(b: np.ndarray) -> np.ndarray:
    return b & ~windows(b, 3, "constant", constant_values=True).all((-1, -2))


def reference(logits, depth, batch) -> dict[str, float]:
    """The metrics from plain NumPy formulas over the whole set (float64)."""
    prob = 1 / (1 + np.exp(-logits.double().numpy()[:, 0]))
    pred, gt = prob > 0.5, batch["mask"].double().numpy()[:, 0] > 0.5
    tp, fp, fn = (pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()
    unions = (pred | gt).sum((1, 2))
    out = {
        "mask_iou": tp / (tp + fp + fn),
        "mask_iou_per_image": np.mean((pred & gt).sum((1, 2)) / unions),
        "mask_dice": 2 * tp / (2 * tp + fp + fn),
        "mask_precision": tp / (tp + fp),
        "mask_recall": tp / (tp + fn),
    }
    pb, gb = np_boundary(pred), np_boundary(gt)
    pb_near = windows(pb, 5, "constant", constant_values=False).any((-1, -2))
    gb_near = windows(gb, 5, "constant", constant_values=False).any((-1, -2))
    bp, br = (pb & gb_near).sum() / pb.sum(), (gb & pb_near).sum() / gb.sum()
    out["mask_boundary_f"] = 2 * bp * br / (bp + br)

    p, t = depth.double().numpy()[:, 0], batch["depth"].double().numpy()[:, 0]
    m = (batch["depth_valid"].numpy()[:, 0] > 0.5) & (t > 0)
    pv, tv = p[m], t[m]
    pos = np.maximum(pv, 1e-6 * DEPTH_MAX)
    ratio = np.maximum(pos / tv, tv / pos)
    filled = np.where(m, p, t) / DEPTH_MAX
    out.update({
        "depth_rmse": np.sqrt(np.mean((pv - tv) ** 2)),
        "depth_mae": np.mean(np.abs(pv - tv)),
        "depth_absrel": np.mean(np.abs(pv - tv) / tv),
        "depth_sqrel": np.mean((pv - tv) ** 2 / tv),
        "depth_rmse_log": np.sqrt(np.mean((np.log(pos) - np.log(tv)) ** 2)),
        "depth_delta1": np.mean(ratio < 1.25),
        "depth_delta2": np.mean(ratio < 1.25**2),
        "depth_delta3": np.mean(ratio < 1.25**3),
        "depth_ssim": np_ssim_map(filled, t / DEPTH_MAX)[m].mean(),
        "depth_dice": 2 * np.sum(pv * tv) / (np.sum(pv) + np.sum(tv)) / DEPTH_MAX,
    })
    return out


def assert_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-5) -> None:
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=tol, abs=tol), name


def test_matches_numpy_formulas_over_uneven_batches():
    logits, depth, batch = make_data(0, 9)
    want = reference(logits, depth, batch)
    whole = Metrics(DEPTH_MAX)
    whole.update(logits, depth, batch)
    split = Metrics(DEPTH_MAX)
    for lo, hi in ((0, 3), (3, 8), (8, 9)):
        split.update(logits[lo:hi], depth[lo:hi], {k: v[lo:hi] for k, v in batch.items()})
    got_whole, got_split = whole.compute(), split.compute()
    assert set(got_whole) == {n for n in METRIC_NAMES if not n.startswith("aligned_")}
    assert_close(got_whole, want)
    assert_close(got_split, got_whole, 1e-6)  # float32 convolutions vary with batch size
    assert 0 < want["mask_boundary_f"] < 1 and 0 < want["depth_ssim"] < 1


def test_matches_torchmetrics():
    logits, depth, batch = make_data(1, 5)
    m = Metrics(DEPTH_MAX)
    m.update(logits, depth, batch)
    got = m.compute()
    prob, target = torch.sigmoid(logits).flatten(), (batch["mask"] > 0.5).int().flatten()
    for name, metric in (("mask_iou", BinaryJaccardIndex()), ("mask_dice", BinaryF1Score()),
                         ("mask_precision", BinaryPrecision()), ("mask_recall", BinaryRecall())):
        assert got[name] == pytest.approx(metric(prob, target).item(), abs=1e-5), name
    keep = (batch["depth_valid"] > 0.5) & (batch["depth"] > 0)
    pv, tv = depth[keep], batch["depth"][keep]
    assert got["depth_rmse"] == pytest.approx(MeanSquaredError(squared=False)(pv, tv).item(), rel=1e-5)
    assert got["depth_mae"] == pytest.approx(MeanAbsoluteError()(pv, tv).item(), rel=1e-5)


def test_perfect_prediction_scores_perfectly():
    _, _, batch = make_data(2, 4)
    logits = (batch["mask"] - 0.5) * 20
    depth = batch["depth"].clone()
    m = Metrics(DEPTH_MAX, aligned=True)
    m.update(logits, depth, batch)
    got = m.compute()
    for name in ("mask_iou", "mask_iou_per_image", "mask_dice", "mask_precision", "mask_recall",
                 "mask_boundary_f", "depth_delta1", "depth_ssim"):
        assert got[name] == pytest.approx(1.0, abs=1e-6), name
    for name in ("depth_rmse", "depth_mae", "depth_absrel", "depth_rmse_log", "aligned_depth_rmse"):
        assert got[name] == pytest.approx(0.0, abs=1e-6), name


def test_boundary_f_tolerates_two_pixels_not_more():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:20, 8:20] = 1
    batch = {"mask": target, "depth": torch.ones_like(target), "depth_valid": torch.ones_like(target)}

    def f_score(shift: int) -> float:
        m = Metrics(DEPTH_MAX)
        m.update((torch.roll(target, shift, dims=3) - 0.5) * 20, torch.ones_like(target), batch)
        return m.compute()["mask_boundary_f"]

    assert f_score(2) == pytest.approx(1.0)
    assert f_score(3) < 1.0


def test_aligned_metrics_undo_scale_and_shift():
    _, _, batch = make_data(3, 4)
    scale = torch.tensor([0.5, 2.0, 3.0, 0.1]).view(-1, 1, 1, 1)
    shift = torch.tensor([1.0, -0.5, 0.2, 4.0]).view(-1, 1, 1, 1)
    depth = scale * batch["depth"] + shift
    m = Metrics(DEPTH_MAX, aligned=True)
    m.update(torch.zeros_like(depth), depth, batch)
    got = m.compute()
    assert got["aligned_depth_absrel"] == pytest.approx(0.0, abs=1e-5)
    assert got["aligned_depth_rmse"] == pytest.approx(0.0, abs=1e-4)
    assert got["aligned_depth_delta1"] == pytest.approx(1.0)
    assert got["depth_absrel"] > 0.1  # the raw one still sees the error
    per = m.per_sample(torch.zeros_like(depth), depth, batch)
    assert per["aligned_depth_absrel"].abs().max() < 1e-5 and per["depth_absrel"].min() > 0.01


def test_alignment_is_least_squares_and_handles_constant_prediction():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    pred[1] = 0.3
    valid = torch.rand(2, 1, 8, 8, generator=g) > 0.3
    aligned = align_scale_shift(pred, target, valid)
    p, t = pred[0][valid[0]].double().numpy(), target[0][valid[0]].double().numpy()
    s, b = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), t, rcond=None)[0]
    assert np.allclose(aligned[0][valid[0]].numpy(), s * p + b, atol=1e-5)
    assert torch.allclose(aligned[1], target[1][valid[1]].mean().expand_as(aligned[1]), atol=1e-6)


def test_per_sample_matches_single_image_metrics():
    logits, depth, batch = make_data(5, 3)
    per = Metrics(DEPTH_MAX).per_sample(logits, depth, batch)
    assert set(per) == {"mask_iou", "depth_rmse", "depth_absrel"}
    for i in range(3):
        m = Metrics(DEPTH_MAX)
        m.update(logits[i:i + 1], depth[i:i + 1], {k: v[i:i + 1] for k, v in batch.items()})
        got = m.compute()
        for name in per:
            assert per[name][i].item() == pytest.approx(got[name], rel=1e-5), name


def test_no_valid_depth_and_empty_masks():
    logits, depth, batch = make_data(6, 2)
    batch = dict(batch, mask=torch.zeros_like(batch["mask"]), depth_valid=torch.zeros_like(batch["mask"]))
    m = Metrics(DEPTH_MAX, aligned=True)
    m.update(torch.full_like(logits, -10.0), depth, batch)
    got = m.compute()
    assert got["mask_iou"] == 1.0 and got["mask_iou_per_image"] == 1.0 and got["mask_boundary_f"] == 1.0
    assert all(math.isnan(got[n]) for n in got if "depth_" in n)
    per = m.per_sample(logits, depth, batch)
    assert torch.isnan(per["depth_rmse"]).all() and torch.isfinite(per["mask_iou"]).all()
    assert all(math.isnan(v) for n, v in Metrics(DEPTH_MAX).compute().items() if "depth_" in n)


def test_reset_and_bf16_inputs():
    logits, depth, batch = make_data(7, 3)
    m = Metrics(DEPTH_MAX)
    m.update(logits.bfloat16(), depth.bfloat16(), batch)
    first = m.compute()
    assert all(math.isfinite(v) for v in first.values())
    m.reset()
    m.update(logits, depth, batch)
    assert m.compute()["depth_rmse"] == pytest.approx(first["depth_rmse"], rel=0.05)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="depth_max"):
        Metrics(-1.0)
    with pytest.raises(UserError, match="threshold"):
        Metrics(DEPTH_MAX, threshold=1.0)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logits, depth, batch = make_data(8, 9)
        m = Metrics(DEPTH_MAX, aligned=True)
        # rank 0 sees samples 0-4 in two batches, rank 1 samples 5-8 in one
        for lo, hi in ([(0, 2), (2, 5)], [(5, 9)])[rank]:
            m.update(logits[lo:hi], depth[lo:hi], {k: v[lo:hi] for k, v in batch.items()})
        result = m.compute()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduce_equals_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    logits, depth, batch = make_data(8, 9)
    single = Metrics(DEPTH_MAX, aligned=True)
    single.update(logits, depth, batch)
    want = single.compute()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert_close(got, want, 1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, depth, batch = make_data(9, 4)
    cpu, gpu = Metrics(DEPTH_MAX, aligned=True), Metrics(DEPTH_MAX, aligned=True)
    cpu.update(logits, depth, batch)
    gpu.update(logits.cuda(), depth.cuda(), {k: v.cuda() for k, v in batch.items()})
    assert_close(gpu.compute(), cpu.compute(), 1e-5)
