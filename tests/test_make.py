"""`maskdepth data make`: reproducible bytes, shard ranges, resuming after kill -9, refusals, the stored truth."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskdepth.cli import main
from maskdepth.codecs import decode_depth_png, decode_gray, decode_rgb
from maskdepth.data.format import DatasetDir
from maskdepth.data.make import MakeConfig, make_dataset
from maskdepth.data.shards import iter_shard
from maskdepth.errors import UserError

TINY = MakeConfig(size=(48, 48), backgrounds=3, foregrounds=2, per_pair=2, shard_size=5, test_fraction=0.34)
TINY_ARGS = ["--size", "48", "--backgrounds", "3", "--foregrounds", "2", "--per-pair", "2", "--shard-size", "5",
             "--test-fraction", "0.34"]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "data"
    make_dataset(out, TINY, workers=1, progress=False)
    return out


def test_layout_metadata_and_stored_truth(reference):
    ds = DatasetDir(reference)
    meta = ds.meta
    assert meta["counts"] == {"backgrounds": 3, "cutouts": 2, "foregrounds": 4, "train": 2 * 4 * 2,
                              "test": 1 * 4 * 2}
    assert meta["split"]["test_backgrounds"] and len(meta["split"]["test_backgrounds"]) == 1
    assert ds.size == (48, 48) and ds.depth_unit == "metres" and ds.depth_scale == 0.001
    assert meta["command"].startswith("maskdepth data make OUT --size 48x48 --backgrounds 3")
    for split in ("train", "test"):
        assert sum(meta["shard_counts"][split]) == ds.num_samples(split)
        keys = []
        for path in ds.shards(split):
            for key, s in iter_shard(path):
                keys.append(key)
                info = json.loads(s["json"])
                assert (info["bg"] in meta["split"]["test_backgrounds"]) == (split == "test")
                image, mask = decode_rgb(s["fg_bg.jpg"]), decode_gray(s["mask.png"])
                depth = decode_depth_png(s["depth.png"])
                bg_depth = decode_depth_png((reference / "backgrounds" / f"bg-{info['bg']:05d}.depth.png").read_bytes())
                assert image.shape == (48, 48, 3) and mask.dtype == np.uint8 and depth.dtype == np.uint16
                assert np.array_equal(depth[mask == 0], bg_depth[mask == 0])  # outside: the background's depth
                assert (depth <= bg_depth).all()  # inside: nearer or equal
                assert mask.max() > 0
        assert len(keys) == len(set(keys)) == ds.num_samples(split)
    # every (background, cutout, flip) triple of the train split appears per_pair times
    triples = [(j["bg"], j["fg"], j["flip"]) for p in ds.shards("train")
               for j in (json.loads(s["json"]) for _, s in iter_shard(p))]
    assert len(set(triples)) == 2 * 2 * 2 and all(triples.count(t) == 2 for t in set(triples))


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, reference):
    again = tmp_path / "again"
    make_dataset(again, TINY, workers=2, progress=False)  # two worker processes: the same bytes as one
    assert files(again) == files(reference)
    other = tmp_path / "other"
    make_dataset(other, MakeConfig(**{**TINY.__dict__, "seed": 1}), workers=1, progress=False)
    a, b = files(reference), files(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("shards/"))


def test_shard_ranges_built_separately_equal_one_run(tmp_path, reference):
    out = tmp_path / "parts"
    first = make_dataset(out, TINY, shards="0:2", workers=1, progress=False)
    assert first["shards_written"] == 2 and first["total_shards"] == 6
    second = make_dataset(out, TINY, shards="2:", workers=2, progress=False)
    assert second["shards_written"] == 4
    assert files(out) == files(reference)
    rerun = make_dataset(out, TINY, workers=1, progress=False)
    assert rerun["shards_written"] == 0 and rerun["shards_complete_before"] == 6


def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(tmp_path):
    args = ["--size", "48", "--backgrounds", "3", "--foregrounds", "3", "--per-pair", "6", "--shard-size", "2",
            "--test-fraction", "0.34", "--workers", "2", "--quiet"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "maskdepth", "data", "make", str(out), *args]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE)
    shards = out / "shards"
    deadline = time.monotonic() + 120
    while not (shards.is_dir() and any(p.suffix == ".tar" for p in shards.iterdir())):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, workers included, as a crash would
    proc.wait()
    done = len(list(shards.glob("*.tar")))
    total = sum(len(v) for v in json.loads((out / "metadata.json").read_text())["shards"].values())
    assert 0 < done < total  # it really was interrupted
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    reference = tmp_path / "whole"
    assert main(["data", "make", str(reference), *args]) == 0
    assert files(out) == files(reference)


def test_refuses_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["data", "make", str(out), *TINY_ARGS, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not a maskdepth dataset" in err[0]
    assert main(["data", "make", str(out), *TINY_ARGS, "--quiet", "--force"]) == 2  # --force does not change that
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]


def test_refuses_a_different_dataset_unless_forced(tmp_path, capsys, reference):
    out = tmp_path / "data"
    make_dataset(out, TINY, shards="0:1", workers=1, progress=False)
    before = files(out)
    assert main(["data", "make", str(out), *TINY_ARGS, "--seed", "7", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different maskdepth dataset" in err[0] and "seed" in err[0]
    assert files(out) == before
    (out / "notes.txt").write_text("mine")  # the user's note inside our dataset survives --force
    assert main(["data", "make", str(out), *TINY_ARGS, "--seed", "7", "--force", "--quiet"]) == 0
    assert json.loads((out / "metadata.json").read_text())["seed"] == 7
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("extra, words", [
    (["--shards", "3:99"], "--shards"),
    (["--shards", "x"], "--shards"),
    (["--size", "big"], "--size"),
    (["--size", "8"], "--size"),
    (["--per-pair", "0"], "--per-pair"),
    (["--bg-dir", "nowhere"], "nowhere"),
])
def test_bad_options_are_one_line(tmp_path, capsys, extra, words):
    args = [a for a in TINY_ARGS]
    if "--bg-dir" in extra:
        i = args.index("--backgrounds")
        del args[i:i + 2]
    assert main(["data", "make", str(tmp_path / "d"), *args, *extra, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def _photo_folders(tmp_path: Path, cutout_hw: tuple[int, int]) -> tuple[Path, Path]:
    """bgs/ with two random 90x60 room photos, fgs/ with one RGBA cutout of size cutout_hw (a red box)."""
    from PIL import Image

    bg_dir, fg_dir = tmp_path / "bgs", tmp_path / "fgs"
    bg_dir.mkdir()
    fg_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(bg_dir / f"room{i}.jpg")
    h, w = cutout_hw
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[h // 15:h - h // 15, w // 10:w - w // 10] = (200, 30, 30, 255)
    Image.fromarray(rgba).save(fg_dir / "thing.png")
    return bg_dir, fg_dir


def test_user_photos_and_cutouts(tmp_path):
    from PIL import Image

    bg_dir, fg_dir = _photo_folders(tmp_path, (300, 100))  # larger than the 48 px background: shrunk to fit
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(fg_dir / "flat.png")  # no alpha
    out = tmp_path / "mine"
    summary = make_dataset(out, MakeConfig(size=(48, 48), per_pair=2, shard_size=8, test_fraction=0.5,
                                           bg_dir=str(bg_dir), fg_dir=str(fg_dir)), workers=1, progress=False)
    meta = summary["metadata"]
    assert meta["counts"]["backgrounds"] == 2 and meta["counts"]["cutouts"] == 1
    assert json.loads((out / "skipped.json").read_text())["skipped"][0]["path"].endswith("flat.png")
    assert "--bg-dir" in meta["command"] and meta["depth"]["max"] > 0
    for _, s in iter_shard(DatasetDir(out).shards("train")[0]):
        assert decode_depth_png(s["depth.png"]).max() == 0  # depth unknown without a teacher
        assert decode_gray(s["mask.png"]).max() > 0


def test_make_rejects_bad_config_in_python():
    with pytest.raises(UserError):
        MakeConfig(size=(48, 48), test_fraction=1.0).check()


def test_shadows_reflections_camouflage_and_shading_change_fg_bg_only(tmp_path):
    from maskdepth.data.compose import ComposeConfig

    effects = dict(cast_prob=1.0, reflection_prob=1.0, camo_prob=1.0, shade_prob=1.0)
    on = make_dataset(tmp_path / "on", dataclasses.replace(TINY, compose=ComposeConfig(**effects)), workers=1,
                      progress=False)
    off = make_dataset(tmp_path / "off", dataclasses.replace(TINY, compose=ComposeConfig(
        **dict.fromkeys(effects, 0.0))), workers=1, progress=False)
    assert on["metadata"]["compose"]["cast_prob"] == 1.0 and off["metadata"]["compose"]["cast_prob"] == 0.0
    samples = {}
    for name in ("on", "off"):
        ds = DatasetDir(tmp_path / name)
        samples[name] = {k: s for p in ds.shards("train") for k, s in iter_shard(p)}
    assert samples["on"].keys() == samples["off"].keys()
    differ = 0
    for key, a in samples["on"].items():
        b = samples["off"][key]
        assert a["mask.png"] == b["mask.png"] and a["depth.png"] == b["depth.png"]  # the truth is the same
        info = json.loads(a["json"])
        assert info["cast_shadow"] > 0 and info["reflection"] > 0 and info["camouflage"] > 0
        assert len(info["light"]) == 2 and len(info["shading"]) == 3
        assert json.loads(b["json"])["cast_shadow"] == 0
        differ += a["fg_bg.jpg"] != b["fg_bg.jpg"]
    assert differ == len(samples["on"])


def test_plain_make_pastes_cutouts_without_synthetic_effects(tmp_path):
    from maskdepth.data.compose import ComposeConfig

    plain = ComposeConfig().plain()
    assert plain.is_plain and not ComposeConfig().is_plain
    out = tmp_path / "plain"
    assert main(["data", "make", str(out), "--size", "32", "--backgrounds", "2", "--foregrounds", "2",
                 "--per-pair", "1", "--workers", "1", "--plain", "--quiet"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert "--plain" in meta["command"]
    assert all(meta["compose"][name] == 0 for name in ComposeConfig.EFFECTS)


def _edit_metadata(root: Path, edit) -> None:
    meta = json.loads((root / "metadata.json").read_text())
    edit(meta)
    (root / "metadata.json").write_text(json.dumps(meta))


def test_resumes_a_dataset_recorded_before_a_compose_field_existed(tmp_path, capsys):
    # photos of rooms and cutouts: nothing procedural, so only the recorded [compose] could differ
    bg_dir, fg_dir = _photo_folders(tmp_path, (60, 30))
    args = ["--size", "48", "--per-pair", "2", "--shard-size", "4", "--test-fraction", "0.5", "--bg-dir",
            str(bg_dir), "--fg-dir", str(fg_dir), "--quiet"]
    out = tmp_path / "mine"
    assert main(["data", "make", str(out), *args, "--shards", "0:1"]) == 0
    assert "procedural_version" not in json.loads((out / "metadata.json").read_text())
    _edit_metadata(out, lambda m: [m["compose"].pop(k) for k in ("camo_luma", "clutter")])  # as recorded before
    assert main(["data", "make", str(out), *args]) == 0
    assert len(list((out / "shards").glob("*.tar"))) > 1  # the other shards were written
    capsys.readouterr()
    assert main(["data", "make", str(out), *args, "--plain"]) == 2  # a real difference
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compose" in err[0]


def test_refuses_to_resume_procedural_data_drawn_by_another_version(tmp_path, capsys):
    out = tmp_path / "data"
    make_dataset(out, TINY, shards="0:1", workers=1, progress=False)
    _edit_metadata(out, lambda m: m.pop("procedural_version"))  # made before the clothes changed
    before = files(out)
    assert main(["data", "make", str(out), *TINY_ARGS, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "procedural_version" in err[0] and "--force" in err[0]
    assert files(out) == before
