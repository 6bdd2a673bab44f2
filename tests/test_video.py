"""`maskdepth predict --video`: streamed frames in, playable mask / depth / overlay videos out; a truncated or
corrupt clip is one line and keeps the frames written so far as valid videos."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from maskdepth.cli import main
from maskdepth.codecs import decode_image
from maskdepth.predict import load_model
from maskdepth.video import alpha_webm_supported, write_synthetic_clip

H, W, FRAMES = 48, 64, 12


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    bg = write_synthetic_clip(folder / "clip.mp4", FRAMES, H, W, rate=10)
    Image.fromarray(bg).save(folder / "bg.png")
    return folder / "bg.png", folder / "clip.mp4"


def decode(path, fmt: str = "rgb24") -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["predict", "--device", "cpu", *map(str, argv)])
    return code, capsys.readouterr().err.strip()


def test_video_outputs_match_frame_by_frame_prediction(ckpt, clip, tmp_path, capsys):
    bg, video = clip
    out = tmp_path / "out"
    extra = ["--alpha-webm"] if alpha_webm_supported() else []
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", video, "--out", out, "--depth-frames",
                    "--batch-size", "5", *extra)  # 12 frames in batches of 5: the last batch is short
    assert code == 0, err
    frames = decode(video)
    assert len(frames) == FRAMES
    preds = load_model(ckpt, "cpu").predict_arrays([np.asarray(Image.open(bg))] * FRAMES, frames)
    for name in ("mask.mp4", "depth_color.mp4", "overlay.mp4"):
        got = decode(out / name)
        assert len(got) == FRAMES and got[0].shape == (H, W, 3), name
    mask = np.stack([f[..., 0] for f in decode(out / "mask.mp4")]).astype(np.float32)
    want = np.stack([p.mask_prob for p in preds]) * 255.0
    assert np.abs(mask - want).mean() < 3.0  # H.264 at crf 18: a few grey levels at most on average
    info = json.loads((out / "video.json").read_text())
    assert info["frames"] == FRAMES and info["complete"] and info["rate"] == 10.0
    depth_files = sorted((out / "depth").iterdir())
    assert [p.name for p in depth_files] == [f"{i:06d}.png" for i in range(FRAMES)]
    depth = np.asarray(decode_image(depth_files[3].read_bytes()), dtype=np.float64) * info["depth_frames"]["scale"]
    assert np.abs(depth - preds[3].depth).max() <= 0.001  # 16-bit, lossless up to one step
    if extra:
        with av.open(str(out / "foreground.webm")) as c:  # libvpx decodes the alpha plane
            dec = av.CodecContext.create("libvpx-vp9", "r")
            rgba = [f.to_ndarray(format="rgba") for p in c.demux(video=0) for f in dec.decode(p)]
        assert len(rgba) == FRAMES
        assert np.abs(rgba[0][..., 3].astype(np.float32) - want[0]).mean() < 6.0


def test_existing_outputs_are_kept_without_force(ckpt, clip, tmp_path, capsys):
    bg, video = clip
    out = tmp_path / "out"
    out.mkdir()
    (out / "mask.mp4").write_bytes(b"mine")
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", video, "--out", out)
    assert code == 2 and "mask.mp4: already exists" in err and "--force" in err and "\n" not in err
    assert (out / "mask.mp4").read_bytes() == b"mine"
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", video, "--out", out, "--force")
    assert code == 0 and len(decode(out / "mask.mp4")) == FRAMES


@pytest.mark.parametrize("fmt", ["mp4-faststart", "matroska"])
def test_truncated_video_is_one_line_and_keeps_valid_partial_videos(ckpt, clip, tmp_path, capsys, fmt):
    bg, video = clip
    # remux into a container whose index comes first, so a cut-short file still opens
    whole = tmp_path / f"whole.{fmt}"
    with av.open(str(video)) as src, av.open(str(whole), "w", format=fmt.split("-")[0],
                                             options={"movflags": "+faststart"} if "faststart" in fmt else {}) as dst:
        s = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = s
                dst.mux(packet)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    out = tmp_path / "out"
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", cut, "--out", out)
    assert code == 2 and "\n" not in err.splitlines()[-1]
    line = err.splitlines()[-1]
    assert "corrupt or truncated" in line and "Traceback" not in err
    info = json.loads((out / "video.json").read_text())
    assert 0 < info["frames"] < FRAMES and not info["complete"]
    assert f"the {info['frames']} frames before that were written" in line
    for name in ("mask.mp4", "depth_color.mp4", "overlay.mp4"):
        assert len(decode(out / name)) == info["frames"]  # closed properly: playable to its last frame


def test_bad_video_inputs_are_one_line(ckpt, clip, tmp_path, capsys):
    bg, video = clip
    not_video = tmp_path / "notes.mp4"
    not_video.write_bytes(b"this is not a video" * 50)
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", not_video, "--out", tmp_path / "a")
    assert code == 2 and "notes.mp4: cannot read video" in err and "\n" not in err
    assert not (tmp_path / "a" / "mask.mp4").exists()
    cut = tmp_path / "cut.mp4"  # an ordinary MP4 keeps its index at the end: cut short, it cannot be opened
    cut.write_bytes(video.read_bytes()[:2000])
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", cut, "--out", tmp_path / "b")
    assert code == 2 and "cut.mp4: cannot read video" in err
    small_bg = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(small_bg)
    code, err = run(capsys, "--ckpt", ckpt, "--bg", small_bg, "--video", video, "--out", tmp_path / "c")
    assert code == 2 and f"frames are {W}x{H} but the bg is 10x10" in err and "--resize-bg" in err
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", tmp_path / "missing.mp4", "--out", tmp_path / "d")
    assert code == 2 and "missing.mp4: video not found" in err
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--image", bg, "--out", tmp_path / "e", "--depth-frames")
    assert code == 2 and "go with --video" in err


def test_force_replaces_the_depth_frames_by_the_one_rule(ckpt, clip, tmp_path, capsys):
    bg, video = clip
    out = tmp_path / "out"
    (out / "depth").mkdir(parents=True)
    (out / "depth" / "999999.png").write_bytes(b"an earlier, longer clip's frame")
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", video, "--out", out, "--depth-frames", "--force")
    assert code == 0, err
    assert sorted(p.name for p in (out / "depth").iterdir()) == [f"{i:06d}.png" for i in range(FRAMES)]
    (out / "depth" / "notes.txt").write_text("mine")
    code, err = run(capsys, "--ckpt", ckpt, "--bg", bg, "--video", video, "--out", out, "--depth-frames", "--force")
    assert code == 2 and "not depth frames" in err and "\n" not in err
    assert (out / "depth" / "notes.txt").read_text() == "mine"
