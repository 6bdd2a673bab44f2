"""Cutouts: procedural objects (soft alpha, trimmed, sized, deterministic) and the user's RGBA PNG files."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskdepth.data.cutouts import KINDS, load_cutout, load_cutouts, procedural_cutout
from maskdepth.errors import UserError


def png16(path, arr: np.ndarray) -> None:
    """Write a 16-bit RGBA PNG by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    head = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_procedural_cutouts_are_soft_trimmed_and_sized():
    seen = set()
    for seed in range(48):
        c = procedural_cutout(np.random.default_rng(seed), size=64)
        kind = c.name.rsplit("-", 1)[0]
        seen.add(kind)
        h, w, ch = c.rgba.shape
        assert ch == 4 and c.rgba.dtype == np.uint8
        assert 62 <= max(h, w) <= 64, (c.name, c.rgba.shape)
        a = c.rgba[..., 3]
        assert a[0].any() and a[-1].any() and a[:, 0].any() and a[:, -1].any(), c.name  # trimmed to the bbox
        assert ((a > 0) & (a < 255)).sum() >= 10, c.name  # anti-aliased edge
        assert (a == 255).any(), c.name
        lo, hi = KINDS[kind][0]
        assert 0.5 * lo <= c.height_m <= 1.7 * hi, (c.name, c.height_m)
        assert c.rgba[..., :3][a > 0].std() > 1.0  # textured and shaded, not flat
    assert seen == set(KINDS)


def test_procedural_cutouts_are_deterministic_and_vary():
    a = procedural_cutout(np.random.default_rng(7), size=48)
    b = procedural_cutout(np.random.default_rng(7), size=48)
    c = procedural_cutout(np.random.default_rng(8), size=48)
    assert a.rgba.tobytes() == b.rgba.tobytes() and a.name == b.name and a.height_m == b.height_m
    assert a.rgba.tobytes() != c.rgba.tobytes()


def test_larger_size_keeps_the_shape_and_height():
    small = procedural_cutout(np.random.default_rng(3), size=48)
    big = procedural_cutout(np.random.default_rng(3), size=96)
    assert small.name == big.name
    assert big.height_m == pytest.approx(small.height_m, rel=0.05)
    assert big.rgba.shape[0] / small.rgba.shape[0] == pytest.approx(2.0, rel=0.05)


def test_user_cutout_is_trimmed(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:12, 8:20] = (200, 100, 50, 255)
    rgba[4, 10] = (1, 2, 3, 40)  # a faint edge pixel still counts
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cat.png")
    c = load_cutout(tmp_path / "cat.png")
    assert c.name == "cat" and c.rgba.shape == (8, 12, 4)
    np.testing.assert_array_equal(c.rgba, rgba[4:12, 8:20])


def test_user_cutout_16_bit_becomes_8_bit(tmp_path):
    arr = np.zeros((6, 7, 4), np.uint16)
    arr[2:4, 1:5] = (65535, 32896, 257, 65535)
    png16(tmp_path / "deep.png", arr)
    c = load_cutout(tmp_path / "deep.png")
    assert c.rgba.dtype == np.uint8 and c.rgba.shape == (2, 4, 4)
    np.testing.assert_array_equal(c.rgba[0, 0], (255, 128, 1, 255))


def test_palette_with_transparency_is_accepted(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (2, 3, 6, 8))
    img.save(tmp_path / "p.png", transparency=0)
    assert load_cutout(tmp_path / "p.png").rgba.shape == (5, 4, 4)


@pytest.mark.parametrize("case", ["rgb", "gray", "corrupt", "transparent"])
def test_user_cutout_errors_name_the_file(tmp_path, case):
    path = tmp_path / f"bad-{case}.png"
    if case == "rgb":
        Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
        expect = "has no alpha channel; save it as RGBA PNG with a transparent background"
    elif case == "gray":
        Image.new("L", (8, 8), 9).save(path)
        expect = "has no alpha channel"
    elif case == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
        expect = "cannot read image"
    else:
        Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(path)
        expect = "fully transparent"
    with pytest.raises(UserError) as err:
        load_cutout(path)
    msg = str(err.value)
    assert str(path) in msg and expect in msg and "\n" not in msg


def test_folder_is_sorted_and_bad_folders_are_refused(tmp_path):
    for name, colour in (("b", (0, 255, 0, 255)), ("a", (255, 0, 0, 255)), ("C", (0, 0, 255, 255))):
        Image.new("RGBA", (4, 6), colour).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not a cutout")
    cuts = load_cutouts(tmp_path, default_height_m=0.7)
    assert [c.name for c in cuts] == ["C", "a", "b"]
    assert all(c.height_m == 0.7 and c.rgba.shape == (6, 4, 4) for c in cuts)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .png files"):
        load_cutouts(empty)
    with pytest.raises(UserError, match="not found"):
        load_cutouts(tmp_path / "missing")
    Image.new("RGB", (4, 4)).save(tmp_path / "d.png")
    with pytest.raises(UserError, match="d.png: has no alpha channel"):
        load_cutouts(tmp_path)


def test_bicycles_are_mostly_see_through_with_sub_pixel_parts():
    """The thin-part case real cutouts are hard on: wheels with see-through centres, spokes thinner than a pixel."""
    bikes = [c for c in (procedural_cutout(np.random.default_rng(s)) for s in range(120))
             if c.name.startswith("bicycle")]
    assert len(bikes) >= 3
    for c in bikes:
        a = c.rgba[..., 3]
        assert (a > 127).mean() < 0.35, c.name  # the bounding box is mostly background seen through the wheels
        assert ((a > 0) & (a < 255)).sum() > 0.2 * (a > 0).sum(), c.name  # soft alpha along thin parts


def test_kinds_choose_what_is_drawn():
    for seed in range(6):
        assert procedural_cutout(np.random.default_rng(seed), size=48, kinds=["chair", "bicycle"]).name.split(
            "-")[0] in ("chair", "bicycle")


def test_make_config_refuses_unknown_kinds():
    from maskdepth.data.make import MakeConfig
    from maskdepth.errors import UserError

    with pytest.raises(UserError, match="--fg-kinds bike: give one or more of"):
        MakeConfig(fg_kinds=("bike",)).check()
    MakeConfig(fg_kinds=("bicycle",)).check()


def test_seated_people_are_shorter_and_spread_along_the_floor(monkeypatch):
    from maskdepth.data import cutouts

    def people(pose):
        monkeypatch.setattr(cutouts, "POSES", {pose: 1.0})
        rng = np.random.default_rng(4)
        return [procedural_cutout(rng, 96, kinds=["person"]) for _ in range(12)]

    def foot_width(c):  # of the bottom rows' coverage, relative to the figure's height
        return float((c.rgba[-max(2, c.rgba.shape[0] // 12):, :, 3] > 128).any(0).mean() * c.rgba.shape[1]
                     / c.rgba.shape[0])

    low, high = KINDS["person"][0]
    standing = people("standing")
    assert all(0.85 * low <= c.height_m <= 1.05 * high for c in standing)
    for pose in ("chair", "legs-out", "cross-legged"):
        seated = people(pose)
        # a raised arm can reach a standing figure's height, but not most of the time
        assert np.median([c.height_m for c in seated]) < 0.85 * np.median([c.height_m for c in standing]), pose
        # the legs lie level at the foot: the bottom rows are wider than a standing figure's two feet
        assert np.median([foot_width(c) for c in seated]) > np.median([foot_width(c) for c in standing]), pose
