"""`maskdepth export --web`: the static folder's files, the rewritten runtime, and one-line errors."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.web_export import ORT_BUNDLE, classic_script, ort_dist_dir


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


def ort_installed() -> bool:
    try:
        ort_dist_dir()
    except UserError:
        return False
    return True


def test_missing_runtime_is_one_line(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKDEPTH_ORT_WEB", str(tmp_path / "nowhere"))
    assert main(["export", str(ckpt), "--web", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err.strip()
    assert "onnxruntime-web is not installed" in err and "make setup" in err and "\n" not in err
    assert not (tmp_path / "site").exists()


def test_classic_script_rewrites_module_syntax():
    bundle = 'var u=import.meta.url;function f(){return 1}export{f as InferenceSession,g as env};\n//# sourceMappingURL=x.map\n'
    out = classic_script(bundle)
    assert "import.meta" not in out and "export{" not in out
    assert 'window.ort={"InferenceSession":f,"env":g}' in out
    with pytest.raises(UserError, match="not the onnxruntime-web bundle"):
        classic_script("console.log(1)")


@pytest.mark.skipif(not ort_installed(), reason="onnxruntime-web not installed in web/node_modules (make setup)")
def test_export_web_writes_a_self_contained_folder(ckpt, tmp_path, capsys):
    site = tmp_path / "site"
    assert main(["export", str(ckpt), "--web", str(site)]) == 0
    names = {p.name for p in site.iterdir()}
    assert {"index.html", "page.css", "model.onnx", "model.js", "ort.js", "ort-wasm.js", "config.js"} <= names
    html = (site / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN: every script is a local file
    for script in ("config.js", "ort.js", "ort-wasm.js", "model.js"):
        assert f'<script src="{script}">' in html
    ort_js = (site / "ort.js").read_text()
    assert "import.meta" not in ort_js and "window.ort=" in ort_js
    assert len(ort_js) > 0.9 * len((ort_dist_dir() / ORT_BUNDLE).read_text())
    model_js = (site / "model.js").read_text()
    b64 = model_js.split('"')[1]
    assert base64.b64decode(b64) == (site / "model.onnx").read_bytes()
    config = json.loads((site / "config.js").read_text().split("=", 1)[1].rstrip(";\n"))
    assert config["train_size"] == [48, 48] and config["depth_unit"] == "m" and len(config["turbo"]) == 768
    import onnxruntime as ort  # the exported model runs and has dynamic sizes

    s = ort.InferenceSession(str(site / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    assert s.run(None, {"bg": x, "image": x})[0].shape == (1, 1, 40, 56)
    # a folder that is not ours is refused, --force or not; our own is replaced with --force only
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for force in ([], ["--force"]):
        assert main(["export", str(ckpt), "--web", str(other), *force]) == 2
    assert "not empty" in capsys.readouterr().err and (other / "notes.txt").exists()
    assert main(["export", str(ckpt), "--web", str(site)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--web", str(site), "--force"]) == 0


def test_export_onnx_takes_the_shipped_weights_or_asks_for_a_checkpoint(tmp_path, capsys, monkeypatch):
    import maskdepth.checkpoint

    assert main(["export", "--onnx", str(tmp_path / "m.onnx")]) == 0  # the shipped weights
    assert (tmp_path / "m.onnx").is_file() and "matches PyTorch" in capsys.readouterr().out
    monkeypatch.setattr(maskdepth.checkpoint, "packaged_file", lambda name: tmp_path / "absent" / name)
    assert main(["export", "--onnx", str(tmp_path / "n.onnx")]) == 2  # an installation without them
    err = capsys.readouterr().err
    assert "give the checkpoint" in err and err.count("\n") == 1 and not (tmp_path / "n.onnx").exists()
