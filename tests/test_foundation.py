"""Shared foundations: shard format, metadata, atomic writes, codecs, output-folder guard, CLI error lines."""

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from maskdepth import codecs
from maskdepth.data import format as dataset_format
from maskdepth.data import shards
from maskdepth.data.format import DATASET_OUTPUT
from maskdepth.errors import UserError
from maskdepth.evaluate import EVAL_OUTPUT
from maskdepth.fileio import atomic_path, atomic_write_bytes, folder_lock, open_image, prepare_output_dir


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
        dataset_format.DatasetMetadata.read(tmp_path)
    (tmp_path / dataset_format.METADATA).write_text("{broken")
    with pytest.raises(UserError, match="corrupt metadata"):
        dataset_format.DatasetMetadata.read(tmp_path)
    dataset_format.DatasetMetadata({"format": dataset_format.FORMAT, "format_version": 1, "size": [8, 8],
                                     "depth": {"unit": "metres", "scale": 0.001, "max": 5.0},
                                     "shards": {"train": ["train-000000.tar"]}, "counts": {"train": 2}}).write(tmp_path)
    ds = dataset_format.DatasetDir(tmp_path)
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
    for force in (False, True):  # a folder maskdepth did not write is never emptied, --force or not
        with pytest.raises(UserError, match="not empty and is not a maskdepth dataset"):
            prepare_output_dir(user, DATASET_OUTPUT, force=force)
    assert (user / "precious.txt").read_text() == "keep me"


def test_force_removes_only_what_maskdepth_wrote(tmp_path):
    ds = tmp_path / "ds"
    for name in ("metadata.json", "shards/train-000000.tar", "backgrounds/bg-00000.png", "shards/.x.tar.ab.tmp",
                 "notes.txt", "shards/my-notes.txt"):
        (ds / name).parent.mkdir(parents=True, exist_ok=True)
        (ds / name).write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bg-00001.png").write_text("mine")
    (ds / "cutouts").symlink_to(outside)  # a link is removed as a link, never followed
    with pytest.raises(UserError, match="already holds a maskdepth dataset"):
        prepare_output_dir(ds, DATASET_OUTPUT)
    prepare_output_dir(ds, DATASET_OUTPUT, force=True)
    left = sorted(str(p.relative_to(ds)) for p in ds.rglob("*"))
    assert left == ["cutouts", "notes.txt", "shards", "shards/my-notes.txt"]
    assert (outside / "bg-00001.png").read_text() == "mine"


def test_an_input_inside_the_output_folder_is_refused(tmp_path):
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    (ev / "w.safetensors").write_text("weights")
    for force in (False, True):
        with pytest.raises(UserError, match="an input of this command lies inside"):
            prepare_output_dir(ev, EVAL_OUTPUT, force=force, inputs=[ev / "w.safetensors"])
    assert (ev / "w.safetensors").exists() and (ev / "metrics.json").exists()


def test_atomic_writes_respect_the_umask_and_keep_a_replaced_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"1")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
        (tmp_path / "b.bin").write_bytes(b"0")
        os.chmod(tmp_path / "b.bin", 0o604)
        atomic_write_bytes(tmp_path / "b.bin", b"1")
        assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_a_write_below_a_file_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_bytes(tmp_path / "f" / "out.png", b"1")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_naming_the_path(tmp_path):
    # the write fails as on a full disk; what the user sees is the path being written and why
    with pytest.raises(UserError, match=r"x\.bin: cannot write \(No space left on device\); free some space"):
        with atomic_path(tmp_path / "x.bin"), open("/dev/full", "wb") as f:
            f.write(b"1" * 65536)
            f.flush()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_second_holder_of_a_folder_lock_is_told_at_once(tmp_path):
    with folder_lock(tmp_path / ".lock", "`maskdepth data make`"):
        with pytest.raises(UserError, match="another `maskdepth data make` is writing"):
            with folder_lock(tmp_path / ".lock", "`maskdepth data make`"):
                pass
    with folder_lock(tmp_path / ".lock", "`maskdepth data make`"):
        pass


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
