"""Seed-layout import: folders and zips matched by name or manifest; bad files reported and skipped."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskdepth.cli import main
from maskdepth.codecs import encode_jpeg, encode_png
from maskdepth.data.format import DatasetDir
from maskdepth.data.import_match import match_files
from maskdepth.data.importer import REPORT, import_dataset
from maskdepth.data.loader import make_loader
from maskdepth.data.shards import iter_shard
from maskdepth.errors import UserError

H, W = 24, 32


def jpeg_gray(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def seed_files(bgs: int = 2, per_bg: int = 3, size=(H, W)) -> dict[str, bytes]:
    """Relative path -> bytes of a seed-layout set: bg/bg_B.jpg, fg_bg/fg_bg_B_K.jpg, mask/mask_B_K.jpg (soft,
    JPEG), depth/depth_B_K.png (8-bit)."""
    h, w = size
    files = {}
    yy, xx = np.mgrid[0:h, 0:w]
    for b in range(1, bgs + 1):
        bg = np.zeros((h, w, 3), np.uint8)
        bg[:] = (40 * b, 100, 200 - 40 * b)
        files[f"bg/bg_{b}.jpg"] = encode_jpeg(bg)
        for k in range(1, per_bg + 1):
            alpha = np.clip(255 - 40 * np.hypot(yy - h / 2, xx - 3 * k), 0, 255).astype(np.uint8)
            image = (bg * (1 - alpha[..., None] / 255) + 220 * (alpha[..., None] / 255)).astype(np.uint8)
            files[f"fg_bg/fg_bg_{b}_{k}.jpg"] = encode_jpeg(image)
            files[f"mask/mask_{b}_{k}.jpg"] = jpeg_gray(alpha)
            files[f"depth/depth_{b}_{k}.png"] = encode_png((10 * b + k + yy * 4).astype(np.uint8))
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def with_bad_jpeg(files: dict[str, bytes]) -> dict[str, bytes]:
    files = dict(files)
    files["fg_bg/fg_bg_2_2.jpg"] = files["fg_bg/fg_bg_2_2.jpg"][:200]  # truncated
    return files


def all_samples(root: Path) -> list[dict]:
    ds = DatasetDir(root)
    return [s for split in ("train", "test") for p in ds.shards(split) for _, s in iter_shard(p)]


def test_folder_import_skips_the_corrupt_jpeg(tmp_path):
    src = write_folder(tmp_path / "seed", with_bad_jpeg(seed_files()))
    report = import_dataset(src, tmp_path / "out", test_fraction=0.5, progress=False)
    assert report["imported"]["train"] + report["imported"]["test"] == 5
    assert [p["file"] for p in report["skipped"]] == [str(src / "fg_bg/fg_bg_2_2.jpg")]
    assert json.loads((tmp_path / "out" / REPORT).read_text())["skipped"] == report["skipped"]

    ds = DatasetDir(tmp_path / "out")
    assert ds.meta["source"] == "import" and ds.size == (H, W)
    assert (ds.depth_unit, ds.depth_scale, ds.depth_max) == ("relative", 1 / 65535, 1.0)
    assert ds.meta["shard_counts"] == {k: [v] for k, v in report["imported"].items()}
    # split by background: the test split holds whole backgrounds
    test_bgs = {json.loads(s["json"])["source"]["bg"] for s in map(dict, (s for p in ds.shards("test")
                                                                           for _, s in iter_shard(p)))}
    assert len(test_bgs) == 1
    for s in all_samples(tmp_path / "out"):
        meta = json.loads(s["json"])
        src_names = meta["source"]
        b, k = src_names["fg_bg"].split("_")[-2], src_names["fg_bg"].split("_")[-1].split(".")[0]
        assert src_names["bg"] == f"bg/bg_{b}.jpg" and src_names["mask"] == f"mask/mask_{b}_{k}.jpg"
        assert s["fg_bg.jpg"] == (src / src_names["fg_bg"]).read_bytes()  # JPEG kept as it came
        mask = np.asarray(Image.open(io.BytesIO(s["mask.png"])))
        assert np.array_equal(mask, np.asarray(Image.open(src / src_names["mask"])))  # soft values kept
        depth = np.asarray(Image.open(io.BytesIO(s["depth.png"]))).astype(np.int64)
        want = np.asarray(Image.open(src / src_names["depth"])).astype(np.int64) * 257
        assert np.array_equal(depth, want)
    # the loader reads it: relative depth is value / 255
    batch = next(iter(make_loader(tmp_path / "out", "train", 2, None, train=False, workers=0)))
    assert batch["depth"].max() <= 1.0 and batch["depth"].min() > 0
    assert torch.allclose(batch["depth"] * 255, (batch["depth"] * 255).round(), atol=1e-3)


def test_zip_import_with_workers(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in with_bad_jpeg(seed_files(per_bg=4)).items():
            z.writestr(f"dataset/{name}", data)
        z.writestr("dataset/readme.txt", "not a picture")
    (tmp_path / "seed.zip").write_bytes(buf.getvalue())
    report = import_dataset(tmp_path / "seed.zip", tmp_path / "out", shard_size=3, workers=2, progress=False)
    assert sum(report["imported"].values()) == 7
    assert report["skipped"][0]["file"].endswith("seed.zip:dataset/fg_bg/fg_bg_2_2.jpg")
    assert report["ignored_files"] == 1
    ds = DatasetDir(tmp_path / "out")
    assert sum(ds.meta["shard_counts"]["train"]) + sum(ds.meta["shard_counts"]["test"]) == 7
    assert len(all_samples(tmp_path / "out")) == 7
    assert len({json.loads(s["json"])["source"]["fg_bg"] for s in all_samples(tmp_path / "out")}) == 7


def test_manifest_metres_and_resize(tmp_path):
    files = seed_files(bgs=1, per_bg=2)
    raw = (np.arange(H * W).reshape(H, W) * 7 + 500).astype(np.uint16)
    for k in (1, 2):
        del files[f"depth/depth_1_{k}.png"]
        files[f"d/{k}.png"] = encode_png(raw)
    src = write_folder(tmp_path / "seed", files)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fg_bg", "bg", "mask", "depth"])
        for k in (1, 2):
            w.writerow([f"fg_bg/fg_bg_1_{k}.jpg", "bg/bg_1.jpg", f"mask/mask_1_{k}.jpg", f"d/{k}.png"])
        w.writerow(["fg_bg/missing.jpg", "bg/bg_1.jpg", "mask/mask_1_1.jpg", "d/1.png"])
    report = import_dataset(src, tmp_path / "out", manifest=tmp_path / "list.csv", depth_unit="metres",
                            depth_scale=0.001, size=(12, 16), test_fraction=0.0, progress=False)
    assert report["imported"] == {"train": 2, "test": 0}
    assert "file not found" in report["skipped"][0]["problem"]
    ds = DatasetDir(tmp_path / "out")
    assert ds.size == (12, 16) and ds.depth_unit == "metres" and ds.depth_scale == 0.001
    assert ds.depth_max >= raw.max() * 0.001
    batch = next(iter(make_loader(tmp_path / "out", "train", 2, None, train=False, workers=0)))
    assert batch["image"].shape == (2, 3, 12, 16)
    steps = np.rint(batch["depth"][0, 0].numpy() / 0.001).astype(np.int64)
    assert set(steps.ravel()) <= set(raw.ravel().tolist())  # nearest: stored values only, never blends
    assert abs(steps.mean() - raw.mean()) < 7 * W


def test_problems_are_reported_not_fatal(tmp_path):
    files = seed_files(bgs=2, per_bg=2)
    files["fg_bg/fg_bg_1_3.jpg"] = files["fg_bg/fg_bg_1_1.jpg"]           # no mask, no depth
    files["mask/mask_2_9.jpg"] = files["mask/mask_2_1.jpg"]                # no fg_bg
    files["depth/depth_2_2.png"] = encode_png(np.full((H, W, 3), (250, 0, 0), np.uint8))  # colour depth
    big = seed_files(bgs=1, per_bg=1, size=(H * 2, W))
    files["fg_bg/fg_bg_1_4.jpg"] = big["fg_bg/fg_bg_1_1.jpg"]             # another size
    files["mask/mask_1_4.jpg"] = big["mask/mask_1_1.jpg"]
    files["depth/depth_1_4.png"] = big["depth/depth_1_1.png"]
    src = write_folder(tmp_path / "seed", files)
    report = import_dataset(src, tmp_path / "out", progress=False)
    assert sum(report["imported"].values()) == 3
    problems = {Path(p["file"]).name: p["problem"] for p in report["skipped"]}
    assert "no mask or depth" in problems["fg_bg_1_3.jpg"]
    assert "without a matching fg_bg" in problems["mask_2_9.jpg"]
    assert "colour" in problems["depth_2_2.png"]
    assert "pass --size" in problems["fg_bg_1_4.jpg"]


def test_name_matching_variants():
    names = ["Backgrounds/bg001.jpg", "Backgrounds/bg002.jpg", "Overlay/bg001_fg003_05.jpg",
             "Masks/bg001_fg003_05.png", "DepthImage/15/bg001_fg003_05_depth.png",
             "fg_bg/bg002fg1.jpg", "mask/bg002fg1.jpg", "depth/depth_bg002fg1.jpg"]
    items, problems, _ = match_files(names)
    assert not problems
    got = {i.fg_bg: (i.bg, i.mask, i.depth) for i in items}
    assert got["Overlay/bg001_fg003_05.jpg"] == ("Backgrounds/bg001.jpg", "Masks/bg001_fg003_05.png",
                                                 "DepthImage/15/bg001_fg003_05_depth.png")
    assert got["fg_bg/bg002fg1.jpg"][0] == "Backgrounds/bg002.jpg"
    flat = ["bg_1.png", "bg_12.png", "fg_bg_12_3.jpg", "mask_12_3.png", "depth_12_3.png"]
    items, problems, _ = match_files(flat)
    assert [(i.bg, i.mask, i.depth) for i in items] == [("bg_12.png", "mask_12_3.png", "depth_12_3.png")]


def test_output_folder_rules_and_cli(tmp_path, capsys):
    src = write_folder(tmp_path / "seed", seed_files(bgs=1, per_bg=2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["data", "import", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a maskdepth dataset" in err and (out / "mine.txt").exists()
    # --force never empties a folder maskdepth did not write
    assert main(["data", "import", str(src), str(out), "--force", "--workers", "1"]) == 2
    assert (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    assert main(["data", "import", str(src), str(out), "--workers", "1"]) == 0
    assert "imported 2 samples" in capsys.readouterr().out
    with pytest.raises(UserError, match="already holds a maskdepth dataset"):
        import_dataset(src, out, progress=False)
    (out / "notes.txt").write_text("mine")  # the user's note inside our dataset survives a --force import
    assert main(["data", "import", str(src), str(out), "--force", "--workers", "1"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "metadata.json").is_file()
    with pytest.raises(UserError, match="outside the source"):
        import_dataset(src, src / "inside", progress=False)
    assert main(["data", "import", str(tmp_path / "nope"), str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err
