"""Camera calibration: the floor fit and scale solve on rooms of known geometry, the profile contract, the depth
layers, and `maskdepth calibrate` / `predict --camera` end to end; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from maskdepth.calibration import Distance, fit_floor, parse_distance, profile_from_depth
from maskdepth.camera import (
    MIN_METRIC_DEPTH_M,
    CameraProfile,
    check_profile,
    focal_from,
    load_profile,
    model_fingerprint,
    save_profile,
)
from maskdepth.checkpoint import save_checkpoint
from maskdepth.cli import main
from maskdepth.codecs import decode_depth_png, encode_png
from maskdepth.data.banks import BackgroundBank, CutoutBank, procedural_foreground
from maskdepth.data.compose import ComposeConfig, composite, sample_placements
from maskdepth.data.rooms import _basis, render_room, sample_room
from maskdepth.errors import UserError
from maskdepth.layers import floor_objects, label_regions
from maskdepth.models import create_model
from maskdepth.predict import load_model


def room(seed: int, size=(60, 80)):
    params = sample_room(np.random.default_rng(seed))
    return params, render_room(params, size)


def true_up(params) -> np.ndarray:
    """The world's up (0, 0, 1) in camera coordinates (x right, y down, z forward)."""
    forward, right, up = _basis(params)
    return np.array([right[2], -up[2], forward[2]])


def ray_distance(bg, x: int, y: int) -> float:
    h, w = bg.depth.shape
    a, b = (x + 0.5 - w / 2) / bg.focal_px, (y + 0.5 - h / 2) / bg.focal_px
    return float(bg.depth[y, x]) * math.sqrt(1 + a * a + b * b)


def floor_pixel(bg) -> tuple[int, int]:
    rows, cols = np.nonzero(bg.floor)
    k = int(np.argmax(rows))
    return int(cols[k]), int(rows[k])


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_floor_fit_on_exact_depth_recovers_the_camera_height_and_the_floor(seed):
    params, bg = room(seed)
    fit = fit_floor(bg.depth, bg.focal_px)
    assert fit.distance == pytest.approx(params.cam_height, rel=2e-3)
    assert float(fit.normal @ true_up(params)) > math.cos(math.radians(0.5))
    iou = (fit.inliers & bg.floor).sum() / (fit.inliers | bg.floor).sum()
    assert iou > 0.9


def test_scale_solves_exactly_from_the_height_or_one_distance():
    params, bg = room(5)
    half = bg.depth * np.float32(0.5)  # a "model" whose depth is half the metric depth
    by_height = profile_from_depth(half, bg.focal_px, camera_height=params.cam_height)
    assert by_height.depth_scale == pytest.approx(2.0, rel=3e-3)
    assert by_height.camera_height_m == pytest.approx(params.cam_height)
    x, y = floor_pixel(bg)
    by_distance = profile_from_depth(half, bg.focal_px, distances=[Distance(x, y, ray_distance(bg, x, y))])
    assert by_distance.depth_scale == pytest.approx(2.0, rel=1e-3)
    assert by_distance.camera_height_m == pytest.approx(params.cam_height, rel=3e-3)
    # two true distances agree; with the room's true field of view they agree best near it
    far = (bg.depth.shape[1] // 2, int(np.nonzero(bg.floor[:, bg.depth.shape[1] // 2])[0].min()))
    two = [Distance(x, y, ray_distance(bg, x, y)), Distance(*far, ray_distance(bg, *far))]
    both = profile_from_depth(half, bg.focal_px, distances=two)
    assert both.residuals["distance_spread"] < 2e-3
    assert both.residuals["best_fit_vfov_deg"] == pytest.approx(math.degrees(params.vfov), abs=3.0)


def test_measured_tilt_fixes_the_floor_so_a_tilted_model_floor_does_not_bias_the_scale():
    params, bg = room(5)
    pitch = math.degrees(params.pitch)
    prof = profile_from_depth(bg.depth * np.float32(0.5), bg.focal_px, camera_height=params.cam_height, tilt=pitch)
    assert prof.depth_scale == pytest.approx(2.0, rel=1e-3) and abs(prof.depth_shift) < 1e-3
    assert float(np.dot(prof.floor_normal, true_up(params))) == pytest.approx(1.0, abs=1e-6)
    assert prof.residuals["floor_tilt_error_deg"] < 0.5
    # a model whose depth is off by an offset as well: the floor known in metres gives the scale and the shift
    offset = (bg.depth * np.float32(0.5) - np.float32(0.3)).clip(0.05).astype(np.float32)
    prof = profile_from_depth(offset, bg.focal_px, camera_height=params.cam_height, tilt=pitch)
    assert prof.depth_scale == pytest.approx(2.0, rel=1e-2) and prof.depth_shift == pytest.approx(0.6, abs=0.02)
    np.testing.assert_allclose(prof.metric(offset)[bg.floor], bg.depth[bg.floor], rtol=1e-2)
    # a depth whose floor is warped (far floor stretched): the fit to the measured floor keeps the metric depth
    # near the truth; the plane-distance route is pulled off by the warp
    warped = (bg.depth * (1 + 0.1 * (bg.depth / bg.depth.max()))).astype(np.float32)
    by_tilt = profile_from_depth(warped, bg.focal_px, camera_height=params.cam_height, tilt=pitch)
    by_plane = profile_from_depth(warped, bg.focal_px, camera_height=params.cam_height)

    def floor_error(p):
        return float(np.median(np.abs(p.metric(warped)[bg.floor] / bg.depth[bg.floor] - 1)))

    assert floor_error(by_tilt) < 0.01 < floor_error(by_plane)
    with pytest.raises(UserError, match="goes with --camera-height"):
        profile_from_depth(bg.depth, bg.focal_px, distances=[Distance(*floor_pixel(bg), 2.0)], tilt=10.0)
    with pytest.raises(UserError, match="between -30 and 90"):
        profile_from_depth(bg.depth, bg.focal_px, camera_height=1.5, tilt=120.0)


def test_no_floor_in_view_is_refused():
    h, w = 60, 80
    wall = np.full((h, w), 3.0, np.float32)  # a wall facing the camera: no level plane below it
    with pytest.raises(UserError, match="no floor visible"):
        profile_from_depth(wall, 70.0, camera_height=1.5)
    params, bg = room(6)
    ceiling_only = bg.depth.copy()
    ceiling_only[bg.floor] = 0.0  # floor depth unknown: what is left is walls and ceiling
    with pytest.raises(UserError, match="no floor visible"):
        profile_from_depth(ceiling_only, bg.focal_px, camera_height=params.cam_height)


@pytest.mark.parametrize("kw, match", [
    ({"camera_height": -1.0}, "positive height"),
    ({"camera_height": 0.0}, "positive height"),
    ({"camera_height": None}, "one of the two"),
    ({"camera_height": 1.0, "distances": [Distance(3, 3, 2.0)]}, "one of the two"),
    ({"camera_height": None, "distances": [Distance(80, 3, 2.0)]}, "outside the 80x60"),
    ({"camera_height": None, "distances": [Distance(3, 3, -2.0)]}, "positive distance"),
])
def test_impossible_measurements_are_refused(kw, match):
    _, bg = room(7)
    with pytest.raises(UserError, match=match):
        profile_from_depth(bg.depth, bg.focal_px, **kw)


def test_field_of_view_and_focal_length():
    assert focal_from((100, 200), fov_deg=90.0) == pytest.approx(50.0)
    assert focal_from((100, 200), focal_px=50.0) == 50.0
    assert focal_from((100, 200)) == pytest.approx(50 / math.tan(math.radians(30)))
    for bad in (5.0, 9.9, 170.5, 200.0, -60.0, float("nan")):
        with pytest.raises(UserError, match="between 10 and 170"):
            focal_from((100, 200), fov_deg=bad)
    with pytest.raises(UserError, match="outside 10-170"):
        focal_from((100, 200), focal_px=0.5)
    with pytest.raises(UserError, match="positive"):
        focal_from((100, 200), focal_px=-3.0)
    assert parse_distance("12,34=2.5") == Distance(12, 34, 2.5)
    with pytest.raises(UserError, match="X,Y=M"):
        parse_distance("12;34=2")


def test_profile_round_trip_and_bad_profiles(tmp_path):
    params, bg = room(8)
    prof = profile_from_depth(bg.depth, bg.focal_px, camera_height=params.cam_height, model="m",
                              fingerprint="sha256:abc")
    path = tmp_path / "camera.json"
    save_profile(prof, path)
    assert load_profile(path) == prof
    with pytest.raises(UserError, match="already exists"):
        save_profile(prof, path)
    check_profile(prof, "sha256:abc")
    with pytest.raises(UserError, match="another model"):
        check_profile(prof, "sha256:def")
    d = json.loads(path.read_text())
    shifted = dataclasses.replace(prof, depth_shift=-0.25)
    save_profile(shifted, tmp_path / "shifted.json")
    assert load_profile(tmp_path / "shifted.json") == shifted
    np.testing.assert_allclose(shifted.metric(np.array([1.0, 0.0], np.float32)),
                               [prof.depth_scale - 0.25, MIN_METRIC_DEPTH_M])
    # a profile of version 1 (before the shift) reads with shift 0
    (tmp_path / "v1.json").write_text(json.dumps({**d, "version": 1, "depth": {"scale": d["depth"]["scale"]}}))
    assert load_profile(tmp_path / "v1.json") == prof
    cases = {"corrupt.json": "{\"format\": ", "wrong.json": json.dumps({"hello": 1}),
             "noscale.json": json.dumps({**d, "depth": {}}),
             "negative.json": json.dumps({**d, "depth": {**d["depth"], "scale": -1}}),
             "nanshift.json": json.dumps({**d, "depth": {**d["depth"], "shift": "nan"}}),
             "newer.json": json.dumps({**d, "version": 99})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match="camera profile") as e:
            load_profile(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_profile(tmp_path / "missing.json")


def test_fingerprint_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    a = create_model("maskdepth-small", width=8)
    b = create_model("maskdepth-small", width=8)
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert model_fingerprint(a) != model_fingerprint(b)


def test_regions_and_their_floor_contact_and_height_in_metres():
    mask = np.zeros((20, 30), bool)
    mask[2:6, 2:6] = True
    mask[10:15, 20:28] = True
    mask[14, 0] = True  # a speck
    labels, n = label_regions(mask)
    assert n == 3 and len({labels[3, 3], labels[12, 22], labels[14, 0]}) == 3 and labels[0, 0] == 0
    # one cutout on a room's floor: with the exact floor its contact and height come out in metres
    params, bg = room(9, size=(120, 160))
    bank = BackgroundBank.from_backgrounds([bg])
    cut = CutoutBank.from_cutouts([procedural_foreground(3, 0)])
    cfg = ComposeConfig(shadow_prob=0.0, min_height=0.3)
    p = sample_placements(bank, cut, torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
                          torch.zeros(1, dtype=torch.bool), torch.Generator().manual_seed(0), cfg)
    alpha = composite(bank, cut, p, cfg)["mask"][0, 0].numpy()
    prof = profile_from_depth(bg.depth, bg.focal_px, camera_height=params.cam_height)
    objs = floor_objects(alpha, alpha >= 0.5, prof)
    assert len(objs) == 1
    o = objs[0]
    true_depth = float(p.contact_depth[0])
    assert o["contact_depth_m"] == pytest.approx(true_depth, rel=0.03)
    assert o["height_m"] == pytest.approx(float(p.height_px[0]) * true_depth / bg.focal_px, rel=0.05)
    assert o["contact_distance_m"] > o["contact_depth_m"] or o["contact_px"][0] == prof.size[1] / 2


# --- end to end with the shipped weights on a tiny room ---------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    params, bg = room(3, size=(48, 64))
    (root / "bg.png").write_bytes(encode_png(bg.image))
    frame = bg.image.copy()
    frame[20:40, 28:36] = (230, 40, 40)
    (root / "frame.png").write_bytes(encode_png(frame))
    (root / "small.png").write_bytes(encode_png(bg.image[:40]))
    return root, params


def run_cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def test_calibrate_then_predict_in_metres(files, capsys):
    root, params = files
    cam = root / "camera.json"
    code, err = run_cli(["calibrate", "--bg", root / "bg.png", "--camera-height", params.cam_height, "--fov",
                         math.degrees(params.vfov), "--out", cam], capsys)
    assert code == 0, err
    prof = load_profile(cam)
    assert prof.size == (48, 64) and prof.camera_height_m == pytest.approx(params.cam_height)
    assert prof.vfov_deg == pytest.approx(math.degrees(params.vfov), abs=1e-3)
    # no overwrite without --force
    before = cam.read_bytes()
    code, err = run_cli(["calibrate", "--bg", root / "bg.png", "--camera-height", 2.0, "--out", cam], capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1 and cam.read_bytes() == before
    out = root / "out"
    code, err = run_cli(["predict", "--bg", root / "bg.png", "--image", root / "frame.png", "--camera", cam,
                         "--out", out], capsys)
    assert code == 0, err
    info = json.loads((out / "depth.json").read_text())
    assert info["unit"] == "metres" and "depth_bg.png" in info["layers"]
    objects = json.loads((out / "objects.json").read_text())
    assert objects["unit"] == "metres" and isinstance(objects["objects"], list)
    predictor = load_model(None, "cpu", camera=cam)
    pred = predictor.predict(root / "bg.png", root / "frame.png")
    depth_bg = decode_depth_png((out / "depth_bg.png").read_bytes()) * info["scale"]
    np.testing.assert_allclose(depth_bg, pred.depth_bg, atol=info["scale"])
    # the static scene is the bg layer in metres: the same in every frame, whatever stands in it
    np.testing.assert_array_equal(pred.depth[~pred.mask], pred.depth_bg[~pred.mask])
    raw = load_model(None, "cpu").predict(root / "bg.png", root / "bg.png")
    np.testing.assert_allclose(pred.depth_bg, raw.depth_bg * prof.depth_scale, rtol=1e-5)


def test_bad_inputs_and_bad_profiles_are_one_line_and_write_nothing(files, capsys, tmp_path):
    root, params = files
    bg = root / "bg.png"
    out = tmp_path / "c.json"
    for args, match in [
        (["--camera-height", -1], "positive height"),
        (["--camera-height", 1.5, "--fov", 200], "between 10 and 170"),
        (["--camera-height", 1.5, "--fov", 5], "between 10 and 170"),
        (["--distance", "64,10=2"], "outside the 64x48"),
        (["--distance", "10-3"], "X,Y=M"),
        (["--camera-height", 1.5, "--tilt", -95], "between -30 and 90"),
    ]:
        code, err = run_cli(["calibrate", "--bg", bg, *args, "--out", out], capsys)
        assert code == 2 and match in err and err.count("\n") == 1, err
        assert not out.exists()
    flat = tmp_path / "wall.png"
    flat.write_bytes(encode_png(np.full((48, 64, 3), 128, np.uint8)))
    code, err = run_cli(["calibrate", "--bg", tmp_path / "nope.png", "--camera-height", 1.5, "--out", out], capsys)
    assert code == 2 and "not found" in err and not out.exists()
    code, err = run_cli(["calibrate", "--bg", flat, "--camera-height", 1.5, "--out", out], capsys)  # a blank wall
    assert code == 2 and "no floor visible" in err and err.count("\n") == 1 and not out.exists()

    # profiles: missing, corrupt, another model, another size
    cam = tmp_path / "camera.json"
    assert run_cli(["calibrate", "--bg", bg, "--camera-height", params.cam_height, "--out", cam], capsys)[0] == 0
    torch.manual_seed(0)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, create_model("maskdepth-small", width=8), {"train_size": [48, 48]})
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(cam.read_text()[:50])
    for args, match in [
        (["--camera", tmp_path / "missing.json"], "not found"),
        (["--camera", corrupt], "corrupt camera profile"),
        (["--camera", cam, "--ckpt", other], "made for another model"),
        (["--camera", cam, "--image", root / "small.png", "--bg", root / "small.png"], "calibrated size"),
    ]:
        res = tmp_path / "res"
        base = {"--image": root / "frame.png", "--bg": bg}
        kv = dict(zip(args[::2], args[1::2]))
        full = ["predict", *sum(([k, v] for k, v in {**base, **kv}.items()), []), "--out", res]
        code, err = run_cli(full, capsys)
        assert code == 2 and match in err and err.count("\n") == 1, err
        assert not res.exists() or not any(res.iterdir())


def test_profile_is_checked_against_the_size_in_the_api(files):
    root, params = files
    prof = CameraProfile(size=(10, 10), focal_px=10.0, depth_scale=1.0, floor_normal=(0.0, -1.0, 0.0),
                         camera_height_m=1.0, model="maskdepth", model_fingerprint="x")
    with pytest.raises(UserError, match="another model"):
        load_model(None, "cpu", camera=prof)


def test_depth_bg_is_the_model_on_the_empty_scene_at_the_image_size(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, create_model("maskdepth-small", width=8), {"train_size": [32, 32]})
    predictor = load_model(ckpt, "cpu")
    _, bg = room(2, size=(30, 40))
    frame = bg.image.copy()
    frame[10:25, 15:22] = 255
    pred = predictor.predict(bg.image, frame)
    empty = predictor.predict(bg.image, bg.image)
    np.testing.assert_allclose(pred.depth_bg, empty.depth, rtol=1e-5)
    assert pred.objects is None  # regions in metres need a camera profile
    resized = predictor.predict(bg.image[::2, ::2], frame, resize_bg=True)
    assert resized.depth_bg.shape == frame.shape[:2]
