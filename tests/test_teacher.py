"""Depth teacher: a tiny network built here, exported to ONNX and TorchScript, used as the user's model."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from maskdepth.data.teacher import (
    FLAGS,
    MIN_RELATIVE,
    DepthTeacher,
    TeacherSettings,
    format_flag,
    load_settings,
    parse_flag,
)
from maskdepth.errors import UserError


class TinyDepth(nn.Module):
    """A small monocular depth network: a few convolutions modulating a floor-like disparity that grows down the
    picture (so composites made with it have a floor to stand on and objects in front of it)."""

    def __init__(self, out_channels: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(8, out_channels, 3, padding=1))

    def forward(self, x):
        rows = torch.cumsum(torch.ones_like(x[:, :1]), dim=2)  # 1..H, from the input's own size
        return rows * (1.0 + 0.1 * torch.tanh(self.net(x)))


class Constant(nn.Module):
    """Outputs `value` everywhere: makes the unit conversions checkable exactly."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return x[:, :1] * 0.0 + self.value


def export_onnx(model: nn.Module, path, size=(32, 32), dynamic=True):
    x = torch.rand(1, 3, *size)
    axes = {"image": {0: "n", 2: "h", 3: "w"}, "depth": {0: "n", 2: "h", 3: "w"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["image"], output_names=["depth"],
                          dynamic_axes=axes, dynamo=False)
    return path


def export_torchscript(model: nn.Module, path, size=(32, 32)):
    torch.jit.save(torch.jit.trace(model.eval(), torch.rand(1, 3, *size)), str(path))
    return path


def photos(n: int, size=(40, 56), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    return {"onnx": export_onnx(TinyDepth(), d / "tiny.onnx"),
            "torchscript": export_torchscript(TinyDepth(), d / "tiny.pt")}


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_relative_depth_shapes_and_range(models, kind):
    teacher = DepthTeacher.from_path(models[kind], input_size=(32, 32), batch_size=2)
    ims = photos(3) + photos(1, size=(24, 30))
    out = teacher.predict(ims)
    assert [d.shape for d in out] == [im.shape[:2] for im in ims]
    assert teacher.unit == "relative" and teacher.computed == 4
    for d in out:
        assert d.dtype == np.float32
        assert d.max() == pytest.approx(1.0) and d.min() >= MIN_RELATIVE


def test_onnx_and_torchscript_agree(models):
    ims = photos(2)
    a = DepthTeacher.from_path(models["onnx"]).predict(ims)
    b = DepthTeacher.from_path(models["torchscript"]).predict(ims)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_own_size_input_batches_by_size(models):
    teacher = DepthTeacher.from_path(models["onnx"], batch_size=8)  # no input_size: each picture's own
    ims = photos(2, size=(32, 48)) + photos(1, size=(40, 40))
    assert [d.shape for d in teacher.predict(ims)] == [(32, 48), (32, 48), (40, 40)]


@pytest.mark.parametrize("output,scale,value,expect", [("disparity", 4.0, 2.0, 2.0), ("depth", 0.5, 2.0, 1.0)])
def test_metric_conversion(tmp_path, output, scale, value, expect):
    path = export_onnx(Constant(value), tmp_path / "c.onnx")
    teacher = DepthTeacher.from_path(path, unit="metres", output=output, scale=scale)
    (d,) = teacher.predict(photos(1))
    assert teacher.unit == "metres"
    np.testing.assert_allclose(d, expect, rtol=1e-6)


def test_relative_disparity_becomes_depth(tmp_path):
    """Near (large disparity) must come out small: depth = 1/disparity, normalised to max 1."""
    class Ramp(nn.Module):  # disparity grows downwards: lower rows are nearer
        def forward(self, x):
            rows = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1) + 1.0
            return x[:, :1] * 0.0 + rows
    path = export_torchscript(Ramp(), tmp_path / "ramp.pt")
    (d,) = DepthTeacher.from_path(path, output="disparity").predict(photos(1, size=(20, 8)))
    assert d[0, 0] == pytest.approx(1.0) and d[-1, 0] == pytest.approx(1 / 20)
    assert np.all(np.diff(d[:, 0]) < 0)


def test_cache_hits_on_second_run(models, tmp_path):
    ims = photos(3)
    first = DepthTeacher.from_path(models["onnx"], cache_dir=tmp_path / "cache", input_size=(32, 32))
    a = first.predict(ims)
    again = DepthTeacher.from_path(models["onnx"], cache_dir=tmp_path / "cache", input_size=(32, 32))
    b = again.predict(ims)
    assert first.computed == 3 and again.computed == 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    other = DepthTeacher.from_path(models["onnx"], cache_dir=tmp_path / "cache", input_size=(16, 16))
    other.predict(ims[:1])
    assert other.computed == 1 and other.fingerprint != first.fingerprint


def test_settings_from_json_beside_model(models, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(models["onnx"].read_bytes())
    (tmp_path / "m.json").write_text(json.dumps({"input_size": [24, 24], "input_range": "0-255",
                                                 "mean": [127, 127, 127], "std": [64, 64, 64]}))
    s = load_settings(path, batch_size=3)
    assert s == TeacherSettings(input_size=(24, 24), input_range="0-255", mean=(127, 127, 127),
                                std=(64, 64, 64), batch_size=3)
    assert load_settings(path, input_size=(16, 16)).input_size == (16, 16)  # flags win
    (tmp_path / "m.json").write_text(json.dumps({"inputsize": [24, 24]}))
    with pytest.raises(UserError, match=r"m\.json.*inputsize"):
        load_settings(path)
    (tmp_path / "m.json").write_text(json.dumps({"output": "inverse"}))
    with pytest.raises(UserError, match="output must be one of"):
        load_settings(path)


def test_flags_round_trip():
    for key, value in [("input_size", [24, 32]), ("mean", [0.5, 0.5, 0.5]), ("scale", 10.0), ("batch_size", 4),
                       ("output", "disparity")]:
        flag, text = format_flag(key, value).split(" ")
        assert flag == FLAGS[key] and parse_flag(key, text) == value
    assert parse_flag("input_size", "256") == [256, 256]
    with pytest.raises(UserError, match="--teacher-mean 1,x: not a valid value"):
        parse_flag("mean", "1,x")


def test_static_input_size_from_onnx(tmp_path):
    path = export_onnx(TinyDepth(), tmp_path / "static.onnx", size=(32, 32), dynamic=False)
    teacher = DepthTeacher.from_path(path)
    assert teacher.settings.input_size == (32, 32) and teacher.batch_size == 1
    assert [d.shape for d in teacher.predict(photos(2))] == [(40, 56), (40, 56)]
    with pytest.raises(UserError, match="fixed input of 32x32"):
        DepthTeacher.from_path(path, input_size=(64, 64))


def test_bad_model_files(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(UserError, match="notes.onnx: not a usable ONNX model"):
        DepthTeacher.from_path(text)
    state = tmp_path / "weights.pt"
    torch.save(TinyDepth().state_dict(), state)
    with pytest.raises(UserError, match="weights.pt: not a TorchScript file"):
        DepthTeacher.from_path(state)
    with pytest.raises(UserError, match="not found"):
        DepthTeacher.from_path(tmp_path / "missing.onnx")


def test_cuda_teacher_without_cuda_is_one_line(models):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() or torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="tiny.onnx: ONNX Runtime here has no CUDA provider"):
        DepthTeacher.from_path(models["onnx"], device="cuda")
    with pytest.raises(UserError, match="tiny.pt: no CUDA device"):
        DepthTeacher.from_path(models["torchscript"], device="cuda")


def test_wrong_output_shape_and_failing_input(tmp_path):
    two = export_onnx(TinyDepth(out_channels=2), tmp_path / "two.onnx")
    with pytest.raises(UserError, match=r"two.onnx: the model returned shape \[1, 2, 40, 56\]"):
        DepthTeacher.from_path(two).predict(photos(1))
    # a traced network with a fixed reshape fails on any other size: one line naming the file
    class Fixed(nn.Module):
        def forward(self, x):
            return x[:, :1].reshape(1, 1, 32, 32)
    fixed = export_torchscript(Fixed(), tmp_path / "fixed.pt")
    with pytest.raises(UserError, match=r"fixed.pt: the model failed on an input of shape \[1, 3, 40, 56\]"):
        DepthTeacher.from_path(fixed).predict(photos(1))


# ------------------------------------------------------------------------------------------------ data make


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A few procedural rooms saved as JPEG photos and procedural cutouts saved as RGBA PNGs."""
    from PIL import Image

    from maskdepth.data.banks import procedural_background, procedural_foreground

    d = tmp_path_factory.mktemp("pictures")
    (d / "photos").mkdir()
    (d / "cutouts").mkdir()
    for i in range(3):
        Image.fromarray(procedural_background(3, i, (72, 96)).image).save(d / "photos" / f"room{i}.jpg", quality=90)
    for i in range(2):
        Image.fromarray(procedural_foreground(3, i, 48).rgba, "RGBA").save(d / "cutouts" / f"thing{i}.png")
    return d


def make(pictures, out, teacher, mode, cache):
    from maskdepth.data.make import MakeConfig, make_dataset

    cfg = MakeConfig(size=(48, 48), per_pair=1, shard_size=8, test_fraction=0.3, bg_dir=str(pictures / "photos"),
                     fg_dir=str(pictures / "cutouts"), teacher=str(teacher), teacher_mode=mode,
                     teacher_settings={"output": "disparity"})
    return make_dataset(out, cfg, workers=1, progress=False, teacher_cache=cache)


def read_samples(root):
    from maskdepth.codecs import decode_depth_png, decode_gray
    from maskdepth.data.format import DatasetDir
    from maskdepth.data.shards import iter_shard

    ds = DatasetDir(root)
    for split in ("train", "test"):
        for shard in ds.shards(split):
            for _, s in iter_shard(shard):
                yield json.loads(s["json"]), decode_gray(s["mask.png"]), decode_depth_png(s["depth.png"])


@pytest.mark.parametrize("kind,mode", [("onnx", "per-background"), ("torchscript", "per-background"),
                                       ("onnx", "per-composite"), ("torchscript", "per-composite")])
def test_make_with_teacher(pictures, models, tmp_path, kind, mode):
    from maskdepth.codecs import decode_depth_png, decode_rgb, encode_depth_png
    from maskdepth.data.format import DatasetMetadata, background_files, shard_name

    first = make(pictures, tmp_path / "a", models[kind], mode, cache=tmp_path / "cache")
    meta = DatasetMetadata.read(tmp_path / "a")
    n = meta["counts"]["train"] + meta["counts"]["test"]
    assert n == 3 * 2 * 2 and meta["depth"] == {"unit": "relative", "scale": 1 / 65535, "max": 1.0}
    assert meta["teacher"]["mode"] == mode and meta["teacher"]["fingerprint"]
    assert first["teacher_computed"] == 3 + (n if mode == "per-composite" else 0)

    # backgrounds: the teacher's depth of the stored photo, quantised like every depth map
    teacher = DepthTeacher.from_path(models[kind], threads=1, output="disparity")
    bg_raw = {}
    for b in range(3):
        rgb_p, depth_p, _ = background_files(tmp_path / "a", b)
        bg_raw[b] = decode_depth_png(depth_p.read_bytes())
        (expect,) = teacher.predict([decode_rgb(rgb_p.read_bytes())])
        assert encode_depth_png(expect, meta["depth"]["scale"]) == depth_p.read_bytes()

    for info, mask, depth in read_samples(tmp_path / "a"):
        assert mask.shape == depth.shape == (48, 48)
        if mode == "per-background":  # the composition rule on the teacher's depth, exactly
            bg = bg_raw[info["bg"]]
            np.testing.assert_array_equal(depth[mask == 0], bg[mask == 0])
            assert (depth[mask >= 128] <= bg[mask >= 128]).all() and (mask > 0).any()
        else:  # the teacher's own map of each composite, normalised to max 1
            assert depth.max() == 65535 and depth.min() >= round(MIN_RELATIVE * 65535)

    # the same dataset again, elsewhere, with the same cache: the teacher computes nothing, the bytes agree
    again = make(pictures, tmp_path / "b", models[kind], mode, cache=tmp_path / "cache")
    assert again["teacher_computed"] == 0
    for split in ("train", "test"):
        for j in range(len(meta["shards"][split])):
            name = shard_name(split, j)
            assert (tmp_path / "a/shards" / name).read_bytes() == (tmp_path / "b/shards" / name).read_bytes()


def test_make_cli_teacher_flags_and_bad_model(pictures, models, tmp_path, capsys):
    from maskdepth.cli import main
    from maskdepth.data.format import DatasetMetadata

    base = ["data", "make", "--bg-dir", str(pictures / "photos"), "--fg-dir", str(pictures / "cutouts"),
            "--size", "48", "--per-pair", "1", "--workers", "1", "--quiet"]
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a network")
    assert main([*base, str(tmp_path / "x"), "--depth-teacher", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.onnx: not a usable ONNX model" in err
    assert not (tmp_path / "x" / "metadata.json").exists() and not list((tmp_path / "x").glob("shards/*"))

    assert main([*base, str(tmp_path / "y"), "--teacher-size", "32x32"]) == 2
    assert "--depth-teacher" in capsys.readouterr().err

    assert main([*base, str(tmp_path / "z"), "--depth-teacher", str(models["onnx"]), "--teacher-size", "32x32",
                 "--teacher-unit", "metres", "--teacher-output", "disparity", "--teacher-scale", "2",
                 "--fit", "letterbox", "--fg-scale", "0.2:0.7"]) == 0
    meta = DatasetMetadata.read(tmp_path / "z")
    assert meta["depth"]["unit"] == "metres" and meta["teacher"]["input_size"] == [32, 32]
    assert meta["compose"]["min_height"] == 0.2 and meta["photos"]["fit"] == "letterbox"
    assert "--teacher-size 32x32" in meta["command"] and "--fg-scale 0.2:0.7" in meta["command"]
    assert (tmp_path / "z" / "teacher-cache").is_dir()
    for _, _, depth in read_samples(tmp_path / "z"):
        assert depth.max() > 0  # metric depth in millimetres from the teacher


def test_make_resumes_from_a_cache_only_folder_and_force_keeps_the_cache(pictures, models, tmp_path):
    """A make stopped after the teacher cached results (no metadata yet) is still ours; --force keeps the
    cache, whose entries can never be stale."""
    from maskdepth.data.make import MakeConfig, make_dataset

    out = tmp_path / "d"
    (out / "teacher-cache").mkdir(parents=True)
    cfg = MakeConfig(size=(48, 48), per_pair=1, shard_size=8, test_fraction=0.3, bg_dir=str(pictures / "photos"),
                     fg_dir=str(pictures / "cutouts"), teacher=str(models["onnx"]))
    assert make_dataset(out, cfg, workers=1, progress=False)["teacher_computed"] == 3
    assert list((out / "teacher-cache").rglob("*.npy"))
    again = make_dataset(out, dataclasses.replace(cfg, per_pair=2), workers=1, progress=False, force=True)
    assert again["teacher_computed"] == 0 and again["samples_written"] == 24


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torchscript_teacher_on_cuda_matches_cpu(models):
    ims = photos(3)
    cpu = DepthTeacher.from_path(models["torchscript"]).predict(ims)
    gpu = DepthTeacher.from_path(models["torchscript"], device="cuda").predict(ims)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
