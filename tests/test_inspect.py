"""`data show` grid size, `data stats` numbers on a synthetic dataset, and the picture helpers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskdepth.cli import main
from maskdepth.codecs import decode_rgb
from maskdepth.data.format import DatasetDir
from maskdepth.data.inspect import COLUMNS, dataset_stats, quartets_per_row
from maskdepth.data.shards import iter_shard
from maskdepth.viz import LABEL_H, TURBO_LUT, colorize_depth, make_grid, overlay, to_uint8
from test_loader import BG_DEPTH_MM, SCALE, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), n_train=12, n_test=4, size=(32, 40))


@pytest.mark.parametrize("n", [4, 9])
def test_show_writes_a_grid_of_the_expected_size(data, tmp_path, n, capsys):
    out = tmp_path / f"grid{n}.png"
    assert main(["data", "show", str(data), "--n", str(n), "--out", str(out), "--tile", "20"]) == 0
    per_row, rows = quartets_per_row(n), -(-n // quartets_per_row(n))
    th, tw = 16, 20  # 32x40 scaled so the longer side is 20
    pad = 2
    img = Image.open(out)
    assert img.size == (pad + 4 * per_row * (tw + pad), LABEL_H + pad + pad + rows * (th + pad))
    assert main(["data", "show", str(data), "--n", str(n), "--out", str(out)]) == 2  # exists: no overwrite
    assert "--force" in capsys.readouterr().err


def test_stats_numbers(data, capsys):
    ds = DatasetDir(data)
    samples = [s for p in ds.shards("train") for _, s in iter_shard(p)]
    fg = np.stack([decode_rgb(s["fg_bg.jpg"]) for s in samples]).reshape(-1, 3) / 255.0
    masks = np.stack([np.asarray(Image.open(io.BytesIO(s["mask.png"]))) for s in samples]) / 255.0
    depths = np.stack([np.asarray(Image.open(io.BytesIO(s["depth.png"]))) for s in samples]) * SCALE
    bgs = np.stack([ds.background(json.loads(s["json"])["bg"])[0] for s in samples]).reshape(-1, 3) / 255.0

    st = dataset_stats(data, "train", max_samples=100, progress=False)
    assert st["sampled"] == 12 and st["counts"]["train"] == 12 and st["counts"]["test"] == 4
    assert np.allclose(st["fg_bg"]["mean"], fg.mean(0), atol=1e-5)
    assert np.allclose(st["fg_bg"]["std"], fg.std(0), atol=1e-5)
    assert np.allclose(st["bg"]["mean"], bgs.mean(0), atol=1e-5)
    assert np.allclose(st["bg"]["std"], bgs.std(0), atol=1e-5)
    cov = masks.mean(axis=(1, 2))
    assert st["mask"]["coverage_mean"] == pytest.approx(cov.mean(), abs=1e-6)
    assert (st["mask"]["coverage_min"], st["mask"]["coverage_max"]) == pytest.approx((cov.min(), cov.max()))
    assert st["depth"]["min"] == pytest.approx(0.100) and st["depth"]["max"] == pytest.approx(BG_DEPTH_MM * SCALE)
    assert st["depth"]["mean"] == pytest.approx(depths.mean(), rel=1e-5)
    assert st["depth"]["known_fraction"] == 1.0

    assert dataset_stats(data, "train", max_samples=5, progress=False)["sampled"] == 5
    assert main(["data", "stats", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sampled"] == 12
    assert main(["data", "stats", str(data)]) == 0
    assert "coverage" in capsys.readouterr().out
    assert main(["data", "stats", str(data / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_colorize_depth():
    d = np.array([[0.0, 1.0, 2.0, np.nan, 3.0]], np.float32)
    c = colorize_depth(d)
    assert c.shape == (1, 5, 3) and c.dtype == np.uint8
    assert (c[0, 0] == 0).all() and (c[0, 3] == 0).all()  # unknown -> black
    assert (c[0, 1] == TURBO_LUT[255]).all() and (c[0, 4] == TURBO_LUT[0]).all()  # near red end, far blue end
    assert TURBO_LUT[255, 0] > TURBO_LUT[255, 2] and TURBO_LUT[40, 2] > TURBO_LUT[40, 0]  # red near, blue far
    fixed = colorize_depth(torch.tensor(d)[None], vmin=0.0, vmax=6.0)
    assert (fixed[0, 4] == TURBO_LUT[128]).all()


def test_to_uint8_overlay_and_grid():
    assert to_uint8(torch.ones(3, 4, 5)).shape == (4, 5, 3)
    assert to_uint8(torch.full((1, 4, 5), 0.5)).tolist()[0][0] == 128
    assert to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]
    assert to_uint8(np.array([[65535]], np.uint16)).tolist() == [[255]]
    img = np.full((4, 5, 3), 100, np.uint8)
    m = np.zeros((4, 5), np.float32)
    m[0, 0] = 1.0
    o = overlay(img, m, (255, 0, 0), alpha=0.5)
    assert o[0, 0].tolist() == [178, 50, 50] and o[1, 1].tolist() == [100, 100, 100]
    g = make_grid([[img, m], [np.zeros((8, 10), np.uint8)]], labels=list(COLUMNS[:2]), pad=1)
    assert g.shape == (LABEL_H + 1 + 1 + 2 * (4 + 1), 1 + 2 * (5 + 1), 3)
    assert (g[LABEL_H + 2:LABEL_H + 6, 1:6] == 100).all()  # first tile in place
    assert (g[:LABEL_H] < 255).any()  # labels drawn


def test_show_with_capture_changes_only_the_bg_tiles(data):
    import dataclasses

    from maskdepth.data.capture import CaptureConfig
    from maskdepth.data.inspect import show_grid

    plain = show_grid(data, n=4, tile=40).astype(int)
    bg_only = dataclasses.replace(CaptureConfig.off(), noise_p=1.0, noise_sigma=(0.05, 0.05))
    captured = show_grid(data, n=4, tile=40, capture=bg_only)
    assert captured.shape == plain.shape
    tile_w = (plain.shape[1] - 2) // 4  # one quartet per row: bg | fg_bg | mask | depth, 2 px gaps
    changed = np.abs(captured.astype(int) - plain).sum(axis=(0, 2))  # per column
    assert changed[:tile_w].sum() > 0  # the bg column
    assert changed[tile_w + 2:].sum() == 0  # fg_bg, mask and depth as stored
    full = show_grid(data, n=4, tile=40, capture=CaptureConfig(gradient_p=1.0, vignette_p=1.0))
    assert np.array_equal(full, show_grid(data, n=4, tile=40, capture=CaptureConfig(gradient_p=1.0, vignette_p=1.0)))
    assert np.abs(full.astype(int) - plain)[:, tile_w + 2:2 * tile_w + 2].sum() > 0  # the camera changes fg_bg too
