"""The fault run's fast seeded subset (benchmarks/faults.py runs the full set): `data make` and `train` killed with
SIGKILL at seeded moments, some of them inside a shard or checkpoint write, then rerun or resumed, end byte-identical to an
uninterrupted run; what a killed run leaves loads, and no temp file is left at the end. And a full disk (a small
tmpfs, where one can be mounted) is one clear line that leaves only whole files behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskdepth.checkpoint import save_checkpoint
from maskdepth.cli import main as cli
from maskdepth.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402


def _check(records: list[dict]) -> None:
    assert records and all(r["identical"] for r in records), records
    assert not [r["tmp_left"] for r in records if r["tmp_left"]]
    assert any(not r["finished_first"] for r in records)  # the kills really interrupted something
    checks = [v for r in records for v in r.get("loadable", {}).values() if v is not None]
    assert all(v is True for v in checks), checks


def test_data_make_killed_and_rerun_gives_the_uninterrupted_bytes(tmp_path):
    records = faults.make_trials(tmp_path, moments=1, aimed=2, seed=14)
    _check(records)
    assert {r["workers"] for r in records} == {1, 2}
    aimed = [r for r in records if r["moment"] == "shard write"]
    assert aimed and all(r["tmp_seen"] for r in aimed)


def test_train_killed_even_inside_a_checkpoint_write_resumes_bit_identical(tmp_path):
    records = faults.train_trials(tmp_path, moments=1, aimed=1, seed=14)
    _check(records)
    aimed = [r for r in records if r["moment"] == "checkpoint write"]
    assert aimed and all(r["tmp_seen"] for r in aimed)
    assert all(r["same_file_bytes"] for r in records)


# -- a full disk: one clear line, and every file left behind is whole -------------------------------------------

MAKE = ["--size", "64", "--backgrounds", "3", "--foregrounds", "3", "--per-pair", "8", "--shard-size", "8",
        "--workers", "1", "--quiet"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def _grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)


def _one_clear_line(capsys, disk: Path) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskdepth: error: ") and str(disk) in err[0], err
    assert "No space left on device" in err[0] and "free some space" in err[0]


def _left_whole(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """Every file a failed command left is one the uninterrupted command writes, with the same bytes: nothing
    half-written that looks complete, and no temp file."""
    assert got and all(k in want and got[k] == want[k] for k in got), [k for k in got if got[k] != want.get(k)]


def test_data_make_on_a_full_disk_says_so_and_finishes_once_there_is_room(small_disk, tmp_path, capsys):
    want = tmp_path / "whole"
    assert cli(["data", "make", str(want), *MAKE]) == 0
    want_files = faults.files(want)
    capsys.readouterr()
    out = small_disk / "data"
    assert cli(["data", "make", str(out), *MAKE]) == 2
    _one_clear_line(capsys, small_disk)
    _left_whole({k: v for k, v in faults.files(out).items() if k != ".make.lock"}, want_files)
    assert len(list((out / "shards").glob("*.tar"))) < len(list((want / "shards").glob("*.tar")))
    _grow(small_disk)
    assert cli(["data", "make", str(out), *MAKE]) == 0  # the rerun goes on where the disk filled up
    assert faults.files(out) == want_files


def test_predict_on_a_full_disk_says_so_and_leaves_only_whole_files(small_disk, tmp_path, capsys):
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, create_model("maskdepth-small", width=8, depth_max=16.0),
                    {"train_size": [32, 32], "depth": {"unit": "metres", "scale": 0.001, "max": 16.0}})
    rng = np.random.default_rng(0)
    for name in ("bg", "image"):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    argv = ["predict", "--ckpt", str(ckpt), "--bg", str(tmp_path / "bg.png"), "--image", str(tmp_path / "image.png")]
    assert cli([*argv, "--out", str(tmp_path / "whole")]) == 0
    want = faults.files(tmp_path / "whole")
    capsys.readouterr()
    free = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 48 * 1024))  # room for a few files
    out = small_disk / "pred"
    assert cli([*argv, "--out", str(out)]) == 2
    _one_clear_line(capsys, small_disk)
    got = faults.files(out)
    assert got.keys() != want.keys()  # it really stopped part way
    if "depth.json" in got and "depth_bg.png" not in got:  # the layers are noted once depth_bg.png is written
        info = json.loads(got.pop("depth.json"))
        assert info == {k: v for k, v in json.loads(want["depth.json"]).items() if k != "layers"}
    _left_whole(got, want)
    (small_disk / "filler").unlink()
    assert cli([*argv, "--out", str(out), "--force"]) == 0
    assert faults.files(out) == want
