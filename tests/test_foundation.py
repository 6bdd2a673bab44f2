"""Shared foundations: shard format, metadata, atomic writes, codecs, output-folder guard, CLI error lines."""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from maskdepth import codecs
from maskdepth.data import shards
from maskdepth.errors import UserError
from maskdepth.fileio import atomic_write_bytes, open_image, prepare_output_dir


def _samples(n):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        yield f"{i:08d}", {
            "fg_bg.jpg": codecs.encode_jpeg(img),
            "mask.png": codecs.encode_png(img[..., 0]),
            "depth.png": codecs.encode_depth_png(np.full((8, 8), 2.5), 0.001),
            "json": json.dumps({"bg": 0, "fg": i}).encode(),
        }


def test_shard_roundtrip_is_reproducible(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    assert shards.write_shard(a, _samples(3)) == 3
    shards.write_shard(b, _samples(3))
    assert a.read_bytes() == b.read_bytes()
    got = list(shards.iter_shard(a))
    assert [k for k, _ in got] == ["00000000", "00000001", "00000002"]
    assert set(got[0][1]) == set(shards.SAMPLE_MEMBERS)
    depth = codecs.decode_depth_png(got[1][1]["depth.png"])
    assert depth.dtype == np.uint16 and (depth == 2500).all()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind


def test_truncated_and_foreign_shards_give_one_line(tmp_path):
    good = tmp_path / "good.tar"
    shards.write_shard(good, _samples(2))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:700])
    with pytest.raises(UserError, match="cut.tar: truncated"):
        list(shards.iter_shard(cut))
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as t:
        data = b"hello"
        info = tarfile.TarInfo("readme.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="foreign.tar.*not a maskdepth shard"):
        list(shards.iter_shard(foreign))
    text = tmp_path / "text.tar"
    text.write_text("not a tar at all")
    with pytest.raises(UserError, match="text.tar"):
        list(shards.iter_shard(text))


def test_metadata_errors(tmp_path):
    with pytest.raises(UserError, match="not a maskdepth dataset"):
        shards.read_metadata(tmp_path)
    (tmp_path / shards.METADATA).write_text("{broken")
    with pytest.raises(UserError, match="corrupt metadata"):
        shards.read_metadata(tmp_path)
    shards.write_metadata(tmp_path, {"format": shards.FORMAT, "format_version": 1, "size": [8, 8],
                                     "depth": {"unit": "metres", "scale": 0.001, "max": 5.0},
                                     "shards": {"train": ["train-000000.tar"]}, "counts": {"train": 2}})
    ds = shards.DatasetDir(tmp_path)
    assert ds.size == (8, 8) and ds.depth_max == 5.0
    with pytest.raises(UserError, match="shard missing"):
        ds.shards("train")


def test_codecs_roundtrip_lossless_depth_and_mask():
    depth = np.linspace(0.3, 12.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    back = codecs.decode_depth_png(codecs.encode_depth_png(depth, 0.001)).astype(np.float32) * 0.001
    assert np.abs(back - depth).max() <= 0.0005 + 1e-6
    mask = (np.arange(48 * 64) % 256).astype(np.uint8).reshape(48, 64)
    assert (codecs.decode_gray(codecs.encode_png(mask)) == mask).all()


def test_atomic_write_and_output_guard(tmp_path):
    p = tmp_path / "x" / "f.bin"
    atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc"
    user = tmp_path / "user"
    user.mkdir()
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        prepare_output_dir(user, force=False, owned_by="metadata.json", what="dataset")
    assert (user / "precious.txt").read_text() == "keep me"
    prepare_output_dir(user, force=True, owned_by="metadata.json", what="dataset")
    assert not any(user.iterdir())


def test_open_image_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(UserError, match="bad.jpg: cannot read image"):
        open_image(bad)
    with pytest.raises(UserError, match="missing.png: image not found"):
        open_image(tmp_path / "missing.png")


def test_to_rgb_handles_gray_rgba_and_16bit():
    from PIL import Image

    g16 = Image.fromarray(np.full((5, 7), 65535, np.dtype("<u2")))
    assert codecs.to_rgb_uint8(g16).shape == (5, 7, 3) and codecs.to_rgb_uint8(g16).max() == 255
    rgba = Image.fromarray(np.zeros((5, 7, 4), np.uint8))
    assert codecs.to_rgb_uint8(rgba).shape == (5, 7, 3)
    gray = Image.fromarray(np.zeros((5, 7), np.uint8))
    assert codecs.to_rgb_uint8(gray).shape == (5, 7, 3)


def test_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "maskdepth", "data", "stats", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr


def test_shard_cut_between_members_is_reported(tmp_path):
    good = tmp_path / "good.tar"
    shards.write_shard(good, _samples(2))
    data = good.read_bytes()
    # cut right after the first sample's last member: tar's stream reader would stop silently there
    with tarfile.open(good) as t:
        members = t.getmembers()
    cut_at = members[4].offset
    (tmp_path / "cut.tar").write_bytes(data[:cut_at])
    with pytest.raises(UserError, match="cut.tar: truncated"):
        list(shards.iter_shard(tmp_path / "cut.tar"))


def test_shard_reader_reads_tarfile_written_archives_with_long_names(tmp_path):
    p = tmp_path / "long.tar"
    key = "k" * 120
    with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as t:
        for ext in shards.SAMPLE_MEMBERS:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    [(k, sample)] = list(shards.iter_shard(p))
    assert k == key and sample["json"] == b"abc"
