"""The user's own pictures: fitting photos of any size, floors, cutouts, skip reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskdepth.data.banks import nominal_ground
from maskdepth.data.photos import (
    add_teacher_depth,
    fit_photo,
    floor_mask,
    load_background_photos,
    load_cutout_photos,
    parse_fraction_range,
    with_depth,
    write_skip_report,
)
from maskdepth.errors import UserError


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], -1).astype(np.uint8)


def test_fit_crop_fills_the_frame_from_the_centre():
    rgb = np.zeros((60, 120, 3), np.uint8)
    rgb[:, 30:90] = 255  # the central square is white, the sides black
    image, content = fit_photo(rgb, (32, 32), "crop")
    assert image.shape == (32, 32, 3) and content.all()
    assert image.min() > 200  # only the white centre survives (a filter tap may reach past the edge)


def test_fit_letterbox_keeps_everything_on_black_bars():
    image, content = fit_photo(gradient(60, 120), (32, 32), "letterbox")
    assert image.shape == (32, 32, 3)
    rows = np.flatnonzero(content.any(axis=1))
    assert content.sum() == 16 * 32 and rows[0] == 8 and rows[-1] == 23  # 60x120 -> 16x32, centred
    assert image[~content].max() == 0


def test_background_photos_skip_unreadable_and_apply_exif(tmp_path):
    Image.fromarray(gradient(50, 70)).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(gradient(30, 30)).save(tmp_path / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held upright: stored landscape, shown portrait
    Image.fromarray(gradient(40, 80)).save(tmp_path / "c.jpg", exif=exif)
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image")
    photos, skipped = load_background_photos(tmp_path, (48, 64), fit="letterbox")
    assert [p.name for p in photos] == ["a", "b", "c"]
    assert [s.path for s in skipped] == [str(tmp_path / "d.jpg")] and "d.jpg" in skipped[0].reason
    for p in photos:
        bg = p.background
        assert bg.image.shape == (48, 64, 3) and bg.depth.shape == (48, 64) and not bg.depth.any()
        assert bg.floor.any() and not (bg.floor & ~p.content).any()
    c = photos[2].content
    assert c.any(axis=0).sum() < c.any(axis=1).sum()  # portrait content after the EXIF rotation
    write_skip_report(tmp_path / "report.json", skipped)
    assert json.loads((tmp_path / "report.json").read_text())["skipped"][0]["path"].endswith("d.jpg")


def test_background_folder_errors(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        load_background_photos(tmp_path / "nope", (32, 32))
    with pytest.raises(UserError, match="no images"):
        load_background_photos(tmp_path, (32, 32))
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of its 1 background images"):
        load_background_photos(tmp_path, (32, 32))


def ground_depth(h: int = 64, w: int = 64) -> np.ndarray:
    """A wall above row 20 and a floor plane below it, z-depth as a camera 1.5 m up sees it."""
    v = np.arange(h, dtype=np.float64)[:, None] + 0.5
    f = 55.0
    d = np.where(v > 21, 1.5 * f / np.maximum(v - 20, 1e-6), 8.0)
    return np.repeat(d, w, axis=1).astype(np.float32)


def test_floor_from_depth_leaves_out_vertical_faces():
    content = np.ones((64, 64), bool)
    depth = ground_depth()
    depth[40:, :16] = 2.0  # a box's front face: depth level going up
    horizon_rule = floor_mask(content)
    floor = floor_mask(content, depth=depth)
    assert horizon_rule[40:, :16].all() and not floor[44:, :16].any()
    assert floor[34:, 16:].all() and not floor[:30].any()
    wall = np.full((64, 64), 3.0, np.float32)  # nothing recedes: the horizon rule stands
    np.testing.assert_array_equal(floor_mask(content, depth=wall), horizon_rule)


def test_relative_depth_keeps_nominal_sizes():
    """With relative depth, focal_px * height / depth gives the nominal camera's pixel heights."""
    photos, _ = load_background_photos_from_arrays([gradient(64, 64)])
    nominal, _, focal = nominal_ground((64, 64))
    rel = np.where(nominal < 100, nominal / 7.0, 1.0).astype(np.float32)  # a teacher's depth, 7x too small
    p = with_depth(photos[0], rel, "relative")
    floor = p.background.floor
    assert p.background.focal_px == pytest.approx(focal / 7.0)
    np.testing.assert_allclose(p.background.focal_px * 1.7 / p.background.depth[floor],
                               focal * 1.7 / nominal[floor], rtol=1e-5)
    metric = with_depth(photos[0], nominal, "metres")
    assert metric.background.focal_px == focal


def test_add_teacher_depth_masks_letterbox_bars():
    class FakeTeacher:  # stands in for DepthTeacher: the same predict() and unit
        unit = "metres"

        def predict(self, images, progress=False):
            return [np.full(im.shape[:2], 2.0, np.float32) for im in images]

    photos, _ = load_background_photos_from_arrays([gradient(60, 120)], fit="letterbox")
    (p,) = add_teacher_depth(photos, FakeTeacher())
    assert (p.background.depth[p.content] == 2.0).all() and (p.background.depth[~p.content] == 0).all()


def load_background_photos_from_arrays(arrays, fit="crop"):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(Path(d) / f"p{i}.png")
        return load_background_photos(d, (64, 64), fit=fit)


def test_cutouts_trimmed_shrunk_and_bad_ones_skipped(tmp_path):
    rgba = np.zeros((300, 200, 4), np.uint8)
    rgba[50:250, 40:160, :3] = 200
    rgba[50:250, 40:160, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(gradient(40, 40)).save(tmp_path / "b.png")  # RGB: no alpha
    (tmp_path / "c.png").write_bytes(b"\x89PNG broken")
    cutouts, skipped = load_cutout_photos(tmp_path, max_side=64)
    assert len(cutouts) == 1 and cutouts[0].rgba.shape == (64, 38, 4)  # 200x120 box shrunk to longest 64
    assert cutouts[0].rgba[..., 3].max() == 255
    assert [s.path.rsplit("/", 1)[-1] for s in skipped] == ["b.png", "c.png"]
    assert "alpha" in skipped[0].reason


def test_fraction_range():
    assert parse_fraction_range("0.2:0.6") == (0.2, 0.6)
    assert parse_fraction_range("0.3") == (0.3, 0.3)
    for bad in ("0.6:0.2", "0:0.5", "a:b", "0.1:1.5"):
        with pytest.raises(UserError, match="--fg-scale"):
            parse_fraction_range(bad)
