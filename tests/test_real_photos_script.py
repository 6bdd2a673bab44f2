"""benchmarks/real_photos.py end to end on photos and cutouts of the user's own (here: procedural ones saved as
files, so the real-photo set is never needed): composed through `data make`, scored beside differencing, the
report and the worst-case pictures written."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskdepth.data.banks import procedural_background
from maskdepth.data.cutouts import procedural_cutout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_photos  # noqa: E402


def _photos(tmp_path: Path) -> tuple[Path, Path]:
    bg_dir, fg_dir = tmp_path / "photos", tmp_path / "cutouts"
    bg_dir.mkdir()
    fg_dir.mkdir()
    for i in range(3):
        Image.fromarray(procedural_background(5, i, (96, 96)).image).save(bg_dir / f"room{i}.jpg", quality=92)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(procedural_cutout(rng, 64, kinds=("person",)).rgba).save(fg_dir / f"person{i}.png")
    return bg_dir, fg_dir


@pytest.fixture
def threads():
    """real_photos.py --threads sets torch's thread count for the process: put it back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_real_photos_benchmark_scores_the_model_beside_differencing(tmp_path, monkeypatch, threads):
    bg_dir, fg_dir = _photos(tmp_path)
    out, pictures = tmp_path / "report.json", tmp_path / "worst"
    monkeypatch.setattr(sys, "argv", ["real_photos.py", "--bg-dir", str(bg_dir), "--fg-dir", str(fg_dir),
                                      "--data-size", "96", "--conditions", "aligned", "shifted", "--threads", "1",
                                      "--work", str(tmp_path / "work"), "--pictures", str(pictures),
                                      "--out", str(out)])
    assert real_photos.main() == 0
    report = json.loads(out.read_text())
    assert report["data"]["samples"] == 3 * 2 * 2  # every photo with every cutout and its mirror image
    for cond in ("aligned", "shifted"):
        r = report["conditions"][cond]
        assert 0 < r["model"]["mask_iou"] <= 1 and 0 <= r["baseline"]["mask_iou"] <= 1
        assert r["margin_iou"] == round(r["model"]["mask_iou"] - r["baseline"]["mask_iou"], 4)
        w, h = Image.open(pictures / f"worst-{cond}.png").size
        assert w > 5 * 96 and 8 * 96 < h < 9 * 96 + 60  # five columns, eight composites


def test_real_photos_benchmark_refuses_a_pictures_path_that_is_a_file(tmp_path, monkeypatch, capsys):
    bg_dir, fg_dir = _photos(tmp_path)
    (tmp_path / "taken").write_text("mine")
    monkeypatch.setattr(sys, "argv", ["real_photos.py", "--bg-dir", str(bg_dir), "--fg-dir", str(fg_dir),
                                      "--data-size", "96", "--pictures", str(tmp_path / "taken"),
                                      "--work", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    assert real_photos.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "taken" in err[-1] and "--pictures" in err[-1] and (tmp_path / "taken").read_text() == "mine"


def test_real_photos_benchmark_names_a_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["real_photos.py", "--bg-dir", str(tmp_path / "nowhere"), "--fg-dir",
                                      str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert real_photos.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and not (tmp_path / "r.json").exists()
