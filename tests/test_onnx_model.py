"""Exported ONNX files where a checkpoint is accepted: predict, fingerprints, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskdepth.camera import model_fingerprint
from maskdepth.checkpoint import save_checkpoint
from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.export import export_checkpoint, export_onnx
from maskdepth.models import create_model
from maskdepth.predict import load_model

pytest.importorskip("onnxruntime")
HEADER = {"train_size": [48, 48], "depth": {"unit": "m", "scale": 0.001, "max": 10.0}, "predict_native": True}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("maskdepth-small", width=8).eval()
    folder = tmp_path_factory.mktemp("onnx-model")
    ckpt = folder / "tiny.safetensors"
    save_checkpoint(ckpt, model, HEADER)
    onnx_path = folder / "tiny.onnx"
    export_checkpoint(ckpt, onnx_path)
    return ckpt, onnx_path


def pair(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    image = bg.copy()
    image[10:30, 15:40] = rng.integers(0, 255, 3, dtype=np.uint8)
    return bg, image


def test_an_onnx_file_predicts_what_its_checkpoint_does(files):
    ckpt, onnx_path = files
    bg, image = pair()
    torch_pred = load_model(ckpt, "cpu").predict(bg, image)
    onnx_predictor = load_model(onnx_path, "cpu")
    onnx_pred = onnx_predictor.predict(bg, image)
    assert onnx_predictor.native and onnx_predictor.depth_unit == "m"  # the header came along
    np.testing.assert_allclose(onnx_pred.mask_prob, torch_pred.mask_prob, atol=1e-4)
    np.testing.assert_allclose(onnx_pred.depth, torch_pred.depth, rtol=1e-4, atol=1e-4)
    assert onnx_pred.depth_bg is not None and onnx_pred.work_size == torch_pred.work_size
    # batches of several pairs, one fixed bg
    many = onnx_predictor.predict(bg, [image, image[::-1].copy()])
    assert len(many) == 2 and many[0].mask.shape == (40, 56)


def test_an_onnx_file_has_its_own_fingerprint(files):
    ckpt, onnx_path = files
    prints = {model_fingerprint(load_model(p, "cpu").model) for p in (ckpt, onnx_path)}
    assert len(prints) == 2  # a profile made with one is refused for the other
    assert model_fingerprint(load_model(onnx_path, "cpu").model) == model_fingerprint(load_model(onnx_path).model)


def test_bad_onnx_files_are_one_line_errors(files, tmp_path, capsys):
    import onnx

    _, onnx_path = files
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a usable ONNX model"):
        load_model(junk)
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(UserError, match="without maskdepth's header"):
        load_model(bare)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="ONNX model already"):
        export_onnx(load_model(onnx_path).model, tmp_path / "again.onnx")
    assert main(["export", str(onnx_path), "--onnx", str(tmp_path / "again.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "safetensors" in err and not (tmp_path / "again.onnx").exists()


def test_cli_predict_runs_an_onnx_file(files, tmp_path, capsys):
    from PIL import Image

    _, onnx_path = files
    bg, image = pair()
    Image.fromarray(bg).save(tmp_path / "bg.png")
    Image.fromarray(image).save(tmp_path / "image.png")
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(onnx_path), "--bg", str(tmp_path / "bg.png"), "--image",
                 str(tmp_path / "image.png"), "--out", str(out)]) == 0
    assert (out / "mask.png").is_file() and (out / "depth.png").is_file()
