"""The mutation suite's fast seeded subset (benchmarks/fuzz.py runs the full set): every command on damaged
inputs ends in success or one clear error line, never a traceback or a hang, writes only into its target and
leaves its inputs as they were. Also: malicious pickles under any checkpoint name are refused without running."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

CASES = 32  # 4 per family, seeded: the same inputs on every run


def test_seeded_mutations_give_success_or_one_clear_line(tmp_path):
    records = fuzz.run_all(CASES, seed=14, timeout=60, fast=True, workdir=tmp_path)
    assert len(records) == CASES + 7  # the seeded cases and the seven --force probes
    broken = fuzz.bad(records)
    assert not broken, "\n".join(f"{r['family']} {r['mutation']} {' '.join(r['argv'])}: {r['outcome']} "
                                 f"{r['last_line']} outside={r['wrote_outside']} changed={r['inputs_changed']}"
                                 for r in broken)
    outcomes = {r["outcome"] for r in records}
    assert "clear error" in outcomes and "ok" in outcomes  # the mutations really bite, and some are harmless


class _Payload:
    """Unpickling this writes a file: the proof that loading ran code from the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A torch-saved pickle whose loading would run code, and the file its code would write."""
    import torch

    proof = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"state": _Payload(proof)}, path)
    return path, proof


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".safetensors", ".onnx"])
def test_a_malicious_pickle_is_refused_without_running_by_every_loader(evil, tmp_path, capsys, suffix):
    import shutil

    from maskdepth.cli import main

    path, proof = evil
    ckpt = tmp_path / f"model{suffix}"
    shutil.copy(path, ckpt)
    world = fuzz.build_world(tmp_path / "world")
    commands = [
        ["predict", "--ckpt", str(ckpt), "--bg", str(world.bg), "--image", str(world.image), "--out",
         str(tmp_path / "p")],
        ["evaluate", str(ckpt), "--data", str(world.data), "--out", str(tmp_path / "ev"), "--workers", "0"],
        ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--no-check"],
        ["train", "--data", str(world.data), "--out", str(tmp_path / "run"), "--workers", "0", *fuzz.TRAIN_ARGS,
         "--set", f"model.init={ckpt}"],
        ["bench-infer", "--ckpt", str(ckpt), "--quick", "--backends", "eager"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("maskdepth: error:"), err
        assert not proof.exists(), argv


def test_a_malicious_resume_state_is_refused_without_running(evil, tmp_path, capsys):
    import shutil

    from maskdepth.cli import main

    path, proof = evil
    world = fuzz.build_world(tmp_path / "world")
    run = tmp_path / "run"
    assert main(["train", "--data", str(world.data), "--out", str(run), "--workers", "0", *fuzz.TRAIN_ARGS]) == 0
    shutil.copy(path, run / "state.pt")
    assert main(["train", "--resume", str(run)]) == 2
    assert "unreadable resumable state" in capsys.readouterr().err and not proof.exists()


def test_a_malicious_depth_teacher_is_refused_without_running(evil, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from maskdepth.cli import main

    path, proof = evil
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "room.png")
    for suffix in (".pt", ".onnx"):
        teacher = path.with_suffix(suffix)
        teacher.write_bytes(path.read_bytes())
        assert main(["data", "make", str(tmp_path / f"d{suffix}"), "--bg-dir", str(photos), "--size", "32",
                     "--depth-teacher", str(teacher), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "maskdepth: error:" in err
        assert not proof.exists()
