"""`maskdepth evaluate`: every metric as a table, JSON and Markdown, the worst samples, whole-set metrics that
do not depend on the batch size, flip test-time augmentation, aligned metrics for relative depth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from maskdepth.checkpoint import save_checkpoint
from maskdepth.cli import main as cli
from maskdepth.data.format import DatasetDir
from maskdepth.data.loader import make_loader
from maskdepth.data.make import MakeConfig, make_dataset
from maskdepth.evaluate import GRID_COLUMNS, evaluate_checkpoint, forward_batch
from maskdepth.metrics import DEPTH_METRICS, METRIC_NAMES, Metrics
from maskdepth.models import create_model
from maskdepth.viz import LABEL_H

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    make_dataset(out, MakeConfig(size=(SIZE, SIZE), backgrounds=5, foregrounds=2, per_pair=2, shard_size=8,
                                 test_fraction=0.4), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, dataset) -> Path:
    """An untrained small model with a training header (its metrics are poor, which is all the same here)."""
    torch.manual_seed(0)
    ds = DatasetDir(dataset)
    model = create_model("maskdepth-small", depth_max=ds.depth_max)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, model, {"train_size": [SIZE, SIZE], "depth": ds.meta["depth"]})
    return path


def test_cli_prints_every_metric_and_writes_json_markdown_and_worst_grid(dataset, ckpt, capsys):
    assert cli(["evaluate", str(ckpt), "--data", str(dataset), "--workers", "0", "--worst", "3"]) == 0
    shown = capsys.readouterr().out
    plain = [name for name in METRIC_NAMES if not name.startswith("aligned_")]
    assert all(name in shown for name in plain)
    out = ckpt.parent / "eval-test"
    record = json.loads((out / "metrics.json").read_text())
    assert sorted(record["metrics"]) == sorted(plain)
    n_test = DatasetDir(dataset).num_samples("test")
    assert record["samples"] == n_test and record["split"] == "test" and record["size"] == SIZE
    rows = [line for line in (out / "metrics.md").read_text().splitlines() if line.startswith("|")]
    assert len(rows) == len(plain) + 2  # header, rule, one row per metric
    assert all(row.replace("\\|", "").count("|") == 4 for row in rows)  # "|" inside a cell is escaped
    grid = Image.open(out / "worst.png")
    assert grid.width > len(GRID_COLUMNS) * SIZE and grid.height > LABEL_H + 6 * SIZE  # 3 by IoU + 3 by depth
    # an existing evaluation is replaced only with --force; anything else is refused
    assert cli(["evaluate", str(ckpt), "--data", str(dataset), "--workers", "0", "--limit", "4"]) == 2
    assert "already holds a maskdepth evaluation folder" in capsys.readouterr().err
    assert cli(["evaluate", str(ckpt), "--data", str(dataset), "--workers", "0", "--limit", "4", "--force"]) == 0
    other = ckpt.parent / "notes"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    assert cli(["evaluate", str(ckpt), "--data", str(dataset), "--out", str(other)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line(dataset, tmp_path, capsys):
    assert cli(["evaluate", str(tmp_path / "none.safetensors"), "--data", str(dataset)]) == 2
    assert "none.safetensors: checkpoint not found" in capsys.readouterr().err


def test_whole_set_metrics_do_not_depend_on_the_batch_size(dataset, ckpt):
    small, _ = evaluate_checkpoint(ckpt, dataset, batch_size=3, workers=0, progress=False)
    large, _ = evaluate_checkpoint(ckpt, dataset, batch_size=16, workers=0, progress=False)
    for name, value in small["metrics"].items():
        assert large["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # and they are the metrics module's, over the same samples
    from maskdepth.checkpoint import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(ckpt)
    metrics = Metrics(model.depth_max)
    with torch.no_grad():
        for batch in make_loader(dataset, "test", 16, SIZE, train=False, workers=0):
            metrics.update(*model(batch["bg"], batch["image"]), batch)
    for name, value in metrics.compute().items():
        assert small["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_worst_samples_are_the_worst(dataset, ckpt):
    _, result = evaluate_checkpoint(ckpt, dataset, batch_size=4, worst_k=2, workers=0, progress=False)
    _, every = evaluate_checkpoint(ckpt, dataset, batch_size=4, worst_k=100, workers=0, progress=False)
    ious = [s for s, _ in every.worst["mask_iou"]]
    rmses = [s for s, _ in every.worst["depth_rmse"]]
    assert ious == sorted(ious) and rmses == sorted(rmses, reverse=True)  # worst first
    assert [s for s, _ in result.worst["mask_iou"]] == ious[:2]
    assert [s for s, _ in result.worst["depth_rmse"]] == rmses[:2]
    assert set(result.worst["mask_iou"][0][1]) >= {"bg", "image", "mask", "depth", "pred_mask", "pred_depth"}


def test_flip_tta_averages_the_mirrored_prediction(dataset, ckpt):
    from maskdepth.checkpoint import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(ckpt)
    bg, image = torch.rand(2, 2, 3, SIZE, SIZE).unbind(0)
    with torch.no_grad():
        logits, depth = forward_batch(model, bg, image, tta=True)
        a_logits, a_depth = model(bg, image)
        b_logits, b_depth = model(bg.flip(-1), image.flip(-1))
    prob = (torch.sigmoid(a_logits) + torch.sigmoid(b_logits).flip(-1)) / 2
    torch.testing.assert_close(torch.sigmoid(logits), prob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(depth, (a_depth + b_depth.flip(-1)) / 2)
    record, _ = evaluate_checkpoint(ckpt, dataset, tta=True, workers=0, progress=False)
    assert record["tta"] and 0 <= record["metrics"]["mask_iou"] <= 1


def test_relative_depth_datasets_get_aligned_metrics(dataset, ckpt, tmp_path):
    relative = tmp_path / "relative"
    shutil.copytree(dataset, relative)
    meta = json.loads((relative / "metadata.json").read_text())
    meta["depth"]["unit"] = "relative"
    (relative / "metadata.json").write_text(json.dumps(meta))
    record, _ = evaluate_checkpoint(ckpt, relative, workers=0, progress=False)
    assert all("aligned_" + name in record["metrics"] for name in DEPTH_METRICS)
    # scale-and-shift alignment can only lower the error
    assert record["metrics"]["aligned_depth_rmse"] <= record["metrics"]["depth_rmse"] + 1e-9


def test_aligned_metrics_on_request_for_metric_depth(dataset, ckpt, tmp_path):
    plain, _ = evaluate_checkpoint(ckpt, dataset, workers=0, progress=False)
    assert not any(name.startswith("aligned_") for name in plain["metrics"])
    record, _ = evaluate_checkpoint(ckpt, dataset, workers=0, progress=False, aligned=True)
    assert all("aligned_" + name in record["metrics"] for name in DEPTH_METRICS)
    assert record["metrics"]["depth_delta1"] == plain["metrics"]["depth_delta1"]
    assert cli(["evaluate", str(ckpt), "--data", str(dataset), "--out", str(tmp_path / "ev"), "--aligned",
                 "--workers", "0"]) == 0
    assert "aligned_depth_delta1" in json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
