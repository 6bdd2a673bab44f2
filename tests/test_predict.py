"""Prediction API and `maskdepth predict`: any input kind and size in, outputs at the input's size; bad input is
one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_HEADER as HEADER
from maskdepth.checkpoint import save_checkpoint
from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.models import create_model
from maskdepth.predict import NATIVE_MAX_PIXELS, Predictor, load_model, predict_images, working_size


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def predictor(ckpt):
    return load_model(ckpt, "cpu")


def scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(bg, image) uint8: a gradient room and the same room with a bright box in it."""
    rng = np.random.default_rng(seed)
    bg = np.broadcast_to(np.linspace(40, 200, w, dtype=np.float32)[None, :, None], (h, w, 3)).copy()
    bg += rng.normal(0, 3, bg.shape)
    image = bg.copy()
    image[h // 3: 2 * h // 3, w // 3: w // 2] = (230, 40, 40)
    return np.clip(bg, 0, 255).astype(np.uint8), np.clip(image, 0, 255).astype(np.uint8)


def check(pred, h: int, w: int) -> None:
    assert pred.mask_prob.shape == pred.mask.shape == pred.depth.shape == (h, w)
    assert pred.mask.dtype == bool and pred.mask_prob.dtype == pred.depth.dtype == np.float32
    assert 0.0 <= pred.mask_prob.min() and pred.mask_prob.max() <= 1.0
    assert 0.0 < pred.depth.min() and pred.depth.max() < 10.0
    assert pred.depth_unit == "m"


def test_inputs_of_every_kind_give_outputs_of_their_size(predictor, tmp_path):
    bg, image = scene(37, 53)
    check(predictor.predict(bg, image), 37, 53)  # odd size, uint8 RGB arrays
    rgba = np.dstack([image, np.full((37, 53), 255, np.uint8)])
    check(predictor.predict(np.dstack([bg, rgba[..., 3:]]), rgba), 37, 53)
    gray = image.mean(axis=2).astype(np.uint8)
    check(predictor.predict(bg.mean(axis=2).astype(np.uint8), gray), 37, 53)
    deep = image.astype(np.uint16) * 257  # 16-bit RGB array
    check(predictor.predict(bg.astype(np.uint16) * 257, deep), 37, 53)
    check(predictor.predict(bg / 255.0, image / 255.0), 37, 53)  # float in [0, 1]
    # files: RGBA PNG, 8-bit gray PNG, 16-bit gray PNG, JPEG; and PIL images
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(bg).save(tmp_path / "bg.jpg")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    for name in ("rgba.png", "gray.png", "gray16.png"):
        check(predictor.predict(tmp_path / "bg.jpg", str(tmp_path / name)), 37, 53)
    check(predictor.predict(Image.fromarray(bg), Image.open(tmp_path / "gray16.png")), 37, 53)


def test_working_size_keeps_aspect_and_training_pixel_count():
    h, w = working_size(1080, 1920, (192, 192))
    assert h % 8 == 0 and w % 8 == 0
    assert abs(w / h - 1920 / 1080) < 0.05 and abs(h * w / 192 ** 2 - 1) < 0.1
    assert working_size(37, 53, (48, 48)) == (40, 56)


def test_size_and_native_choose_where_the_model_runs(ckpt):
    bg, image = scene(30, 90)
    assert load_model(ckpt, "cpu").predict(bg, image).work_size == working_size(30, 90, (48, 48))
    assert load_model(ckpt, "cpu", size=96).predict(bg, image).work_size == working_size(30, 90, 96)
    native = load_model(ckpt, "cpu", native=True).predict(bg, image)
    assert native.work_size == (30, 90)
    check(native, 30, 90)
    # above the cap, native resamples to about NATIVE_MAX_PIXELS, aspect kept
    capped = load_model(ckpt, "cpu", native=True).work_size(2160, 3840)
    assert capped[0] * capped[1] <= 1.02 * NATIVE_MAX_PIXELS and abs(capped[1] / capped[0] - 16 / 9) < 0.02
    # below train_size (48x48 here) a thumbnail is enlarged to it, aspect kept
    assert load_model(ckpt, "cpu", native=True).work_size(16, 32) == working_size(16, 32, 48)


def test_weights_that_hold_across_sizes_run_at_the_input_size_by_default(ckpt, tmp_path):
    """A header with predict_native (train.predict_native) makes native the default; a size given, or
    native=False, still chooses the working size."""
    from maskdepth.checkpoint import load_model_from_checkpoint, read_checkpoint

    model, _ = load_model_from_checkpoint(ckpt)
    _, header = read_checkpoint(ckpt)
    multi = tmp_path / "multi.safetensors"
    save_checkpoint(multi, model, {**{k: v for k, v in header.items() if k not in ("model", "model_kwargs")},
                                   "predict_native": True})
    bg, image = scene(30, 90)
    assert load_model(multi, "cpu").predict(bg, image).work_size == (30, 90)
    assert load_model(multi, "cpu", size=96).work_size(30, 90) == working_size(30, 90, 96)
    assert load_model(multi, "cpu", native=False).work_size(30, 90) == working_size(30, 90, (48, 48))
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, model, {"predict_native": "yes"})
    with pytest.raises(UserError, match="predict_native is not true or false"):
        load_model(bad, "cpu")


def test_batched_lists_match_single_pairs(ckpt):
    predictor = load_model(ckpt, "cpu", batch_size=2)
    pairs = [scene(32, 48, seed) for seed in range(3)] + [scene(40, 40, 9)]  # two sizes: two groups
    batched = predictor.predict([b for b, _ in pairs], [i for _, i in pairs])
    for (bg, image), got in zip(pairs, batched):
        want = predictor.predict(bg, image)
        np.testing.assert_allclose(got.mask_prob, want.mask_prob, atol=1e-5)
        np.testing.assert_allclose(got.depth, want.depth, atol=1e-4)
    # one bg for many images (fixed camera)
    bg = pairs[0][0]
    shared = predictor.predict(bg, [i for _, i in pairs[:3]])
    np.testing.assert_allclose(shared[0].depth, batched[0].depth, atol=1e-4)


def test_bg_of_another_size_is_refused_or_resampled(predictor):
    bg, _ = scene(40, 60)
    _, image = scene(37, 53)
    with pytest.raises(UserError, match="resize-bg"):
        predictor.predict(bg, image)
    check(predictor.predict(bg, image, resize_bg=True), 37, 53)


def test_bad_arrays_are_one_line_errors(predictor):
    bg, image = scene(16, 16)
    with pytest.raises(UserError, match="expected"):
        predictor.predict(bg, np.zeros((3, 16, 16, 2), np.uint8))
    with pytest.raises(UserError, match="dtype"):
        predictor.predict(bg, image.astype(np.int64))
    with pytest.raises(UserError, match="2 backgrounds for 3 images"):
        predictor.predict([bg, bg], [image] * 3)


def test_missing_default_weights_is_a_clear_error(monkeypatch):
    import maskdepth.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "DEFAULT_WEIGHTS", "weights/absent.safetensors")
    with pytest.raises(UserError, match="default weights"):
        load_model(None, "cpu")


def test_depth_info_from_header_and_fallback():
    model = create_model("maskdepth-small", width=8, depth_max=20.0)
    assert Predictor(model, HEADER).depth.scale == 0.001
    flat = Predictor(model, {"depth_unit": "relative"}).depth
    assert flat.unit == "relative" and flat.max == 20.0 and flat.scale == pytest.approx(20.0 / 65535)


def test_seed_style_predict_images(ckpt, tmp_path):
    bg, image = scene(24, 32)
    Image.fromarray(bg).save(tmp_path / "bg.png")
    Image.fromarray(image).save(tmp_path / "fg_bg.jpg")
    check(predict_images(ckpt, tmp_path, "bg.png", "fg_bg.jpg", device="cpu"), 24, 32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_cpu(ckpt):
    bg, image = scene(64, 96)
    cpu = load_model(ckpt, "cpu").predict(bg, image)
    gpu = load_model(ckpt, "cuda").predict(bg, image)
    assert np.abs(cpu.mask_prob - gpu.mask_prob).max() < 0.05
    assert np.abs(cpu.depth - gpu.depth).max() < 0.1


# ---- command line ------------------------------------------------------------------------------------------


def write_scene(folder, name: str, h: int = 36, w: int = 52, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    bg, image = scene(h, w, seed)
    Image.fromarray(bg).save(folder / f"bg_{name}.png")
    Image.fromarray(image).save(folder / f"{name}.jpg")
    return folder / f"bg_{name}.png", folder / f"{name}.jpg"


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_pair_writes_all_outputs_and_never_overwrites(ckpt, tmp_path, capsys):
    bg, image = write_scene(tmp_path / "in", "a", 37, 53)
    out = tmp_path / "out"
    code, _ = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", bg, "--image", image, "--out", out, "--device", "cpu")
    assert code == 0
    mask = np.asarray(Image.open(out / "mask.png"))
    depth_png = Image.open(out / "depth.png")
    assert mask.shape == (37, 53) and mask.dtype == np.uint8
    assert depth_png.size == (53, 37) and np.asarray(depth_png).dtype == np.uint16
    meta = json.loads((out / "depth.json").read_text())
    assert meta["unit"] == "m" and meta["scale"] == 0.001
    direct = load_model(ckpt, "cpu").predict(bg, image)
    np.testing.assert_allclose(np.asarray(depth_png) * meta["scale"], direct.depth, atol=meta["scale"])
    for name in ("depth_color.png", "overlay.png"):
        assert Image.open(out / name).size == (53, 37)
    code, err = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", bg, "--image", image, "--out", out)
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", bg, "--image", image, "--out", out, "--force")[0] == 0


def test_cli_folder_with_one_bg_for_many_images(ckpt, tmp_path, capsys):
    folder = tmp_path / "frames"
    for i in range(3):
        bg, _ = write_scene(folder, f"f{i}", seed=0)
    for p in folder.glob("bg_*"):
        p.rename(tmp_path / p.name)  # the images alone in the folder, one bg outside
    out = tmp_path / "out"
    code, _ = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", tmp_path / "bg_f0.png", "--image", folder,
                      "--out", out, "--batch-size", "2")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["f0", "f1", "f2"]
    for i in range(3):
        assert np.asarray(Image.open(out / f"f{i}" / "mask.png")).shape == (36, 52)
        assert (out / f"f{i}" / "overlay.png").is_file()


def test_cli_folders_matched_by_name(ckpt, tmp_path, capsys):
    bgs, images = tmp_path / "bgs", tmp_path / "images"
    bgs.mkdir()
    for i in range(2):
        bg, _ = write_scene(images, f"s{i}", seed=i)
        bg.rename(bgs / f"s{i}.png")
    code, _ = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", bgs, "--image", images, "--out", tmp_path / "o")
    assert code == 0 and (tmp_path / "o" / "s1" / "depth.png").is_file()
    (bgs / "s1.png").unlink()
    code, err = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", bgs, "--image", images, "--out", tmp_path / "p")
    assert code == 2 and "no background named s1" in err


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_cli_bad_inputs_are_one_line_exit_2(ckpt, tmp_path, capsys, monkeypatch):
    bg, image = write_scene(tmp_path, "a")
    other_bg, _ = write_scene(tmp_path, "b", 40, 40)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    # a checkpoint whose header names one model but whose weights are another's
    wrong = create_model("maskdepth-small", width=8)
    wrong.model_name, wrong.model_kwargs = "maskdepth-small", {"width": 16}
    save_checkpoint(tmp_path / "wrong.safetensors", wrong, HEADER)
    out = ["--out", tmp_path / "out"]
    cases = {
        "not found": ["--ckpt", ckpt, "--bg", tmp_path / "nope.png", "--image", image],
        "cannot read image": ["--ckpt", ckpt, "--bg", bg, "--image", tmp_path / "broken.png"],
        "not a readable safetensors": ["--ckpt", tmp_path / "junk.safetensors", "--bg", bg, "--image", image],
        "do not fit": ["--ckpt", tmp_path / "wrong.safetensors", "--bg", bg, "--image", image],
        "--resize-bg": ["--ckpt", ckpt, "--bg", other_bg, "--image", image],
        "not available": ["--ckpt", ckpt, "--bg", bg, "--image", image, "--device", "cuda:7"],
    }
    for expected, args in cases.items():
        code, err = run_cli(capsys, "predict", *args, *out)
        assert code == 2, expected
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    code, _ = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", other_bg, "--image", image, "--resize-bg", *out)
    assert code == 0
    monkeypatch.setattr("maskdepth.fileio.MAX_IMAGE_PIXELS", 1000)  # stands in for a decompression bomb
    code, err = run_cli(capsys, "predict", "--ckpt", ckpt, "--bg", bg, "--image", image, *out, "--force")
    assert code == 2 and "pixel limit" in err


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "maskdepth", "predict", "--bg", str(tmp_path / "x.png"),
                           "--image", str(tmp_path / "y.png"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and "not found" in proc.stderr
