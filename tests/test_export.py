"""ONNX export (dynamic batch and size, parity with PyTorch) and the inference benchmark's plumbing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from maskdepth.bench_infer import bench_infer
from maskdepth.checkpoint import save_checkpoint
from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.export import EXPORT_SIZE, check_parity, export_checkpoint, export_onnx, scene_pair
from maskdepth.models import create_model
from maskdepth.sizes import parse_size

HEADER = {"train_size": [48, 48], "depth": {"unit": "m", "scale": 0.001, "max": 10.0}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("maskdepth-small", width=8).eval()
    # non-trivial BatchNorm statistics, so folding them into the graph is exercised
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, HEADER)
    return path


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_checkpoint(ckpt, out)
    return out, report


def test_export_passes_parity_at_another_size(exported):
    _, report = exported
    assert tuple(report["size"]) != EXPORT_SIZE and report["batch"] == 2
    assert set(report["diffs"]) == {f"{c}/{o}" for c in ("random", "scene") for o in ("mask_logits", "depth")}
    assert report["max_abs_diff"] <= 1e-4


def test_onnx_graph_has_named_dynamic_inputs_and_header(exported):
    path, _ = exported
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["bg", "image"]
    assert [o.name for o in proto.graph.output] == ["mask_logits", "depth"]
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[:1] + dims[2:]] == ["batch", "height", "width"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["maskdepth"])["depth"]["unit"] == "m"


def test_onnx_runtime_runs_other_sizes_and_batches(exported, model):
    path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n, h, w in ((3, 48, 80), (1, 33, 17)):
        bg, image = scene_pair(n, h, w, seed=n)
        mask_logits, depth = session.run(None, {"bg": bg, "image": image})
        assert mask_logits.shape == depth.shape == (n, 1, h, w)
        with torch.inference_mode():
            want = model(torch.from_numpy(bg), torch.from_numpy(image))[1].numpy()
        assert np.abs(depth - want).max() <= 1e-4
        assert depth.min() > 0 and depth.max() < 10.0


def test_failed_parity_leaves_no_file(model, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(UserError, match="nothing was written"):
        export_onnx(model, out, atol=-1.0)  # no real difference is below -1: the check must fail
    assert not out.exists() and not list(tmp_path.iterdir())


def test_parity_check_sees_a_different_model(model, exported):
    path, _ = exported
    other = create_model("maskdepth-small", width=8).eval()
    assert check_parity(other, path)["max_abs_diff"] > 1e-3


def test_cli_export_refuses_to_overwrite_and_reports_bad_checkpoints(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 0
    assert "matches PyTorch" in capsys.readouterr().out
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert main(["export", str(tmp_path / "junk.safetensors"), "--onnx", str(tmp_path / "j.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "j.onnx").exists()


def test_bench_infer_times_eager_and_onnx(model):
    report = bench_infer(model, [(32, 32)], [1, 2], "cpu", ("eager", "onnx"), warmup=1, iters=3, progress=False)
    got = {(r["backend"], r["batch"]) for r in report["results"]}
    assert got == {("eager", 1), ("eager", 2), ("onnx", 1), ("onnx", 2)}
    for r in report["results"]:
        assert r["iters"] >= 3 and r["latency_ms"]["min"] <= r["latency_ms"]["median"] <= r["latency_ms"]["p90"]
        assert r["pairs_per_s"] == pytest.approx(r["batch"] * 1e3 / r["latency_ms"]["median"])


def test_bench_infer_records_a_compile_that_cannot_run(model, monkeypatch):
    def broken_compile(m, **kw):
        def run(*a):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    report = bench_infer(model, [(16, 16)], [1], "cpu", ("eager", "compile"), warmup=0, iters=3, progress=False)
    assert [r["backend"] for r in report["results"]] == ["eager"]
    assert report["skipped"]["compile"].endswith("RuntimeError: no C++ compiler")


def test_cli_bench_infer_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench-infer", "--model", "maskdepth-small", "--quick", "--backends", "eager", "--sizes", "24x40",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["model"] == "maskdepth-small" and report["results"][0]["size"] == [24, 40]
    assert main(["bench-infer", "--model", "maskdepth-small", "--quick", "--out", str(out)]) == 2
    assert parse_size("64") == (64, 64)
    with pytest.raises(UserError):
        parse_size("axb")
