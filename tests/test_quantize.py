"""int8 export: which nodes stay float, agreement with the float model, refusal, CLI and benchmark plumbing."""

from __future__ import annotations

import onnx
import pytest
import torch

from maskdepth import quantize
from maskdepth.bench_infer import bench_infer
from maskdepth.checkpoint import DEFAULT_WEIGHTS, load_model_from_checkpoint, packaged_file
from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.export import export_onnx
from maskdepth.models import create_model
from maskdepth.quantize import agreement, float_ends, quantize_onnx, scene_pairs

pytest.importorskip("onnxruntime.quantization")
SHIPPED = packaged_file(DEFAULT_WEIGHTS)


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory):
    model, header = load_model_from_checkpoint(SHIPPED, map_location="cpu")
    path = tmp_path_factory.mktemp("q") / "float.onnx"
    export_onnx(model, path, header)
    return path


@pytest.fixture(scope="module")
def shipped_int8(shipped_onnx):
    out = shipped_onnx.with_name("int8.onnx")
    report = quantize_onnx(shipped_onnx, out, calibration=scene_pairs(8, (96, 128)))
    return out, report


def test_float_ends_are_the_first_conv_and_the_output_layers(shipped_onnx):
    graph = onnx.load(str(shipped_onnx)).graph
    kept = set(float_ends(onnx.load(str(shipped_onnx))))
    producers = {o: n for n in graph.node for o in n.output}
    assert {producers[o.name].name for o in graph.output} <= kept  # the outputs' own nodes
    inputs = {i.name for i in graph.input}
    assert {n.name for n in graph.node if set(n.input) & inputs} <= kept  # bg - image is never 8 bits
    convs = [n for n in graph.node if n.op_type == "Conv"]
    kept_convs = [n.name for n in convs if n.name in kept]
    # the stem's and the fused inputs' convs, the two head convs and the refinement's last: the rest is int8
    assert "/stem/stem.0/Conv" in kept_convs and "/refine.4/Conv" in kept_convs
    assert len(kept_convs) <= 6 and len(convs) - len(kept_convs) >= 25


def test_int8_reproduces_the_shipped_model_and_keeps_its_header(shipped_onnx, shipped_int8):
    out, report = shipped_int8
    assert report["mask_agreement"] >= quantize.MIN_MASK_AGREEMENT
    assert report["depth_diff_median"] <= quantize.MAX_DEPTH_DIFF
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "maskdepth" in meta and meta["maskdepth_quantization"].startswith("int8")
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    # a different scene stream agrees as well: the check is not tuned to its own pairs
    again = agreement(shipped_onnx, out, scene_pairs(6, (120, 160), seed=7))
    assert again["mask_agreement"] >= 0.9 and again["size"] == [120, 160]


def test_int8_that_disagrees_writes_nothing(shipped_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_MASK_AGREEMENT", 1.01)  # nothing can reach it
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="departs from the float one"):
        quantize_onnx(shipped_onnx, out, calibration=scene_pairs(2, (64, 64)))
    assert not list(tmp_path.iterdir())


def test_cli_int8_export_and_its_refusal_beside_web(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quantize, "CALIBRATION_PAIRS", 4)
    out = tmp_path / "m.onnx"
    assert main(["export", "--onnx", str(out), "--int8"]) == 0  # the shipped weights
    assert "(int8)" in capsys.readouterr().out and out.exists()
    assert main(["export", "--web", str(tmp_path / "web"), "--int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--onnx" in err and not (tmp_path / "web").exists()


def test_bench_infer_records_an_int8_model_that_cannot_be_made(monkeypatch):
    monkeypatch.setattr(quantize, "MIN_MASK_AGREEMENT", 1.01)
    monkeypatch.setattr(quantize, "CALIBRATION_PAIRS", 2)
    torch.manual_seed(0)
    model = create_model("maskdepth-small", width=8).eval()
    report = bench_infer(model, [(32, 32)], [1], "cpu", ("onnx", "onnx-int8"), warmup=0, iters=3, progress=False)
    assert {r["backend"] for r in report["results"]} == {"onnx"}
    assert "departs from the float one" in report["skipped"]["onnx-int8"]
