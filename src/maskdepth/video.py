"""`maskdepth predict --video`: a fixed-camera clip in, mask / coloured-depth / overlay videos out.

Frames are streamed: decode a few frames, predict them as one batch, encode, repeat, so memory does not grow with
the clip's length. Each output is written under a temporary name and renamed when its container is closed. A
decoding error part-way (a corrupt or truncated file) closes every output properly, so the frames written up to
that point are a valid, playable video, and is then reported in one line.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from maskdepth.codecs import encode_depth_png
from maskdepth.errors import UserError
from maskdepth.fileio import (
    OutputKind,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    prepare_output_dir,
    require_file,
)
from maskdepth.predict import Prediction, Predictor, to_rgb_array
from maskdepth.prediction_files import OVERLAY_COLOR
from maskdepth.progress import Progress
from maskdepth.viz import colorize_depth, overlay

VIDEO_FILES = ("mask.mp4", "depth_color.mp4", "overlay.mp4", "video.json")
ALPHA_WEBM = "foreground.webm"
DEPTH_FRAMES = "depth"  # folder of 16-bit PNGs, one per frame
# --force replaces the depth frame folder by the one rule: an earlier clip's frames go, anything else is refused
DEPTH_FRAMES_OUTPUT = OutputKind("depth frame folder", markers=(), owned=("[0-9][0-9][0-9][0-9][0-9][0-9].png",))
CODEC = "libx264"
CRF = "18"  # visually lossless; the mask video's grey levels survive within a few steps
FALLBACK_RATE = Fraction(25)  # for streams that state no frame rate


@dataclass
class VideoReport:
    frames: int
    fps: float  # frames processed per second of wall time
    rate: float  # the clip's own frame rate
    width: int
    height: int
    files: list[str]


def alpha_webm_supported() -> bool:
    """True when this PyAV build can encode VP9 with an alpha plane (libvpx-vp9 and yuva420p)."""
    try:
        codec = av.codec.Codec("libvpx-vp9", "w")
    except (av.FFmpegError, ValueError):
        return False
    return any(f.name == "yuva420p" for f in (codec.video_formats or ()))


def steady_memory(threshold: int = 2**20) -> None:
    """Serve allocations above `threshold` bytes (frames, frame batches) from mmap and give them back when freed.

    glibc raises its mmap threshold up to 32 MiB after the first such buffer is freed; frame-sized buffers then
    come from the heap, fragment it, and peak RSS creeps up with a clip's length (measured: 596 MiB after 60
    frames of 640x480, 798 MiB after 180; 466 and 469 MiB with this). Process-wide, hence called by the command
    line rather than by predict_video; a no-op where the C library has no mallopt."""
    M_MMAP_THRESHOLD = -3
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, int(threshold))
    except (OSError, AttributeError, TypeError):
        pass


def plan_video_outputs(out: str | os.PathLike, depth_frames: bool, alpha_webm: bool, force: bool) -> Path:
    """The output folder; refuses, before any work, to write over earlier outputs unless `force`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder; choose another --out")
    names = list(VIDEO_FILES) + ([ALPHA_WEBM] if alpha_webm else []) + ([DEPTH_FRAMES] if depth_frames else [])
    if not force:
        for name in names:
            if (out / name).exists():
                raise UserError(f"{out / name}: already exists; pass --force to overwrite, or choose another --out")
    frames = out / DEPTH_FRAMES
    if depth_frames and frames.is_dir() and any(frames.iterdir()) and not DEPTH_FRAMES_OUTPUT.is_own(frames):
        raise UserError(f"{frames}: holds files that are not depth frames; choose another --out (--force never "
                        "removes files maskdepth did not write)")
    if alpha_webm and not alpha_webm_supported():
        raise UserError("--alpha-webm: this PyAV build has no VP9 encoder with alpha (libvpx-vp9, yuva420p); "
                        "leave --alpha-webm out")
    return out


class _Encoder:
    """One output video: H.264 in MP4 (or VP9 with alpha in WebM) at the clip's frame rate."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, alpha: bool = False):
        self.container = av.open(str(path), mode="w", format="webm" if alpha else "mp4")
        self.stream = self.container.add_stream("libvpx-vp9" if alpha else CODEC, rate=rate)
        # 4:2:0 needs even sides; an odd row or column is padded by repeating the edge
        self.width, self.height = width + width % 2, height + height % 2
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuva420p" if alpha else "yuv420p"
        self.stream.options = {"crf": "30", "b": "0"} if alpha else {"crf": CRF, "preset": "veryfast"}
        self.stream.thread_count = 1  # several encoders run side by side; one thread each keeps them fair
        self.format = "rgba" if alpha else "rgb24"

    def write(self, picture: np.ndarray) -> None:
        if picture.shape[0] != self.height or picture.shape[1] != self.width:
            picture = np.pad(picture, ((0, self.height - picture.shape[0]), (0, self.width - picture.shape[1]),
                                       (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format=self.format)
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush the frames the encoder still holds
        self.container.close()


def _frames(container, state: dict) -> Iterator[np.ndarray]:
    """RGB frames of the first video stream; a decoding error ends the stream and is kept in `state`."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    it = container.decode(stream)
    while True:
        try:
            frame = next(it)
        except StopIteration:
            return
        except (av.FFmpegError, ValueError, EOFError) as e:
            state["error"] = f"decoding fails after frame {state['decoded']} ({getattr(e, 'strerror', None) or e})"
            return
        state["decoded"] += 1
        yield frame.to_ndarray(format="rgb24")


def _batches(frames: Iterator[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def open_video(path: str | os.PathLike):
    """Open a video file with PyAV; unreadable files and files without a video stream are one clear line."""
    path = require_file(path, "video")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as e:
        raise UserError(f"{path}: cannot read video ({getattr(e, 'strerror', None) or e}); check that it is a "
                        "complete video file (an MP4 cut short loses its index and cannot be read)") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: has no video stream; give a video file (e.g. .mp4, .webm, .mkv)")
    return container


def predict_video(predictor: Predictor, bg: str | os.PathLike, video: str | os.PathLike, out: str | os.PathLike,
                  resize_bg: bool = False, depth_frames: bool = False, alpha_webm: bool = False,
                  force: bool = False, progress: bool = True) -> VideoReport:
    """Predict every frame of `video` against the empty scene `bg`; write mask.mp4 (probability as grey),
    depth_color.mp4, overlay.mp4 and video.json into `out`, plus depth/NNNNNN.png (16-bit, as depth.png of
    `predict`) with `depth_frames` and foreground.webm (VP9 with alpha) with `alpha_webm`.

    Depth colours use one range for the whole clip (from its first batch, widened a little) so they do not
    flicker from frame to frame."""
    video = Path(video)
    out = plan_video_outputs(out, depth_frames, alpha_webm, force)
    bg_rgb = to_rgb_array(bg, "bg")
    container = open_video(video)
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or FALLBACK_RATE
    width, height = stream.codec_context.width, stream.codec_context.height
    expected = _expected_frames(stream, rate)
    if (height, width) != bg_rgb.shape[:2] and not resize_bg:
        container.close()
        raise UserError(f"{video}: frames are {width}x{height} but the bg is {bg_rgb.shape[1]}x{bg_rgb.shape[0]}; "
                        "use a bg of the same size, or --resize-bg")
    out.mkdir(parents=True, exist_ok=True)
    if depth_frames:
        prepare_output_dir(out / DEPTH_FRAMES, DEPTH_FRAMES_OUTPUT, force=True)  # plan_video_outputs checked
    state: dict = {"decoded": 0}
    count, lo_hi = 0, None
    names = ["mask.mp4", "depth_color.mp4", "overlay.mp4"] + ([ALPHA_WEBM] if alpha_webm else [])
    start = time.perf_counter()
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(out / name)) for name in names]
        encoders = [_Encoder(t, width, height, rate, alpha=(name == ALPHA_WEBM)) for t, name in zip(tmps, names)]
        try:
            with Progress(expected or None, "video", unit="frame", enabled=progress) as bar:
                for batch in _batches(_frames(container, state), predictor.batch_size):
                    preds = predictor.predict_arrays([bg_rgb] * len(batch), batch, resize_bg,
                                                     names=[f"{video} frame {count}"] * len(batch))
                    if lo_hi is None:
                        lo_hi = _depth_range(preds)
                    for frame, pred in zip(batch, preds):
                        _write_frame(encoders, frame, pred, lo_hi)
                        if depth_frames:
                            atomic_write_bytes(out / DEPTH_FRAMES / f"{count:06d}.png",
                                               encode_depth_png(np.maximum(pred.depth, predictor.depth.scale),
                                                                predictor.depth.scale))
                        count += 1
                    bar.update(len(batch))
        finally:
            container.close()
            for enc in encoders:
                enc.close()
        if count == 0:  # raised inside the stack, so the empty temporaries are removed, not renamed
            raise UserError(f"{video}: no frame could be decoded ({state.get('error', 'empty stream')}); "
                            "check that it is a complete video file")
    elapsed = time.perf_counter() - start
    if "error" not in state and expected and count < expected - 1:  # one frame of slack for duration rounding
        state["error"] = f"the file ends after {count} of its {expected} frames"
    files = names + ["video.json"] + ([f"{DEPTH_FRAMES}/"] if depth_frames else [])
    info = {"source": str(video), "frames": count, "rate": float(rate), "width": width, "height": height,
            "model": predictor.model_name, "depth_unit": predictor.depth_unit,
            "depth_color_range": list(lo_hi) if lo_hi else None,
            "depth_frames": {"folder": DEPTH_FRAMES, "scale": predictor.depth.scale, "unit": predictor.depth_unit,
                             "meaning": "depth = PNG value * scale, in unit"} if depth_frames else None,
            "complete": "error" not in state, "seconds": round(elapsed, 3)}
    atomic_write_text(out / "video.json", json.dumps(info, indent=2) + "\n")
    if "error" in state:
        raise UserError(f"{video}: corrupt or truncated: {state['error']}; the {count} frames before that were "
                        f"written to {out}/ as complete videos")
    return VideoReport(frames=count, fps=count / max(elapsed, 1e-9), rate=float(rate), width=width,
                       height=height, files=files)


def _expected_frames(stream, rate: Fraction) -> int:
    """How many frames the container says the stream has (0 when it does not say)."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base * rate))
    container_duration = stream.container.duration  # microseconds
    return round(container_duration / 1e6 * float(rate)) if container_duration else 0


def _depth_range(preds: list[Prediction]) -> tuple[float, float]:
    lo = min(float(p.depth.min()) for p in preds)
    hi = max(float(p.depth.max()) for p in preds)
    pad = 0.1 * max(hi - lo, 1e-6)
    return max(lo - pad, 0.0), hi + pad


def _write_frame(encoders: list[_Encoder], frame: np.ndarray, pred: Prediction, lo_hi: tuple[float, float]) -> None:
    grey = (pred.mask_prob * 255.0 + 0.5).astype(np.uint8)
    encoders[0].write(np.repeat(grey[..., None], 3, axis=2))
    encoders[1].write(colorize_depth(pred.depth, *lo_hi))
    encoders[2].write(overlay(frame, pred.mask_prob, OVERLAY_COLOR))
    if len(encoders) > 3:
        encoders[3].write(np.dstack([frame, grey]))


def write_synthetic_clip(path: str | os.PathLike, frames: int, height: int = 480, width: int = 640,
                         rate: int = 25, seed: int = 0) -> np.ndarray:
    """An H.264 MP4 of a fixed-camera scene with a box gliding across it; returns its empty scene (H,W,3) uint8.

    For tests and benchmarks: every frame is made procedurally, one at a time, so a long clip costs no memory."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 200, 3).astype(np.float32)
    scene = base * (0.6 + 0.5 * y / height)[..., None] + 25 * np.sin(x / 23.0 + y / 41.0)[..., None]
    scene[y > 0.6 * height] *= 0.7  # a darker floor
    bg = np.clip(scene, 0, 255).astype(np.uint8)
    bw, bh = max(2, width // 6), max(2, height // 3)
    with atomic_path(path) as tmp:
        enc = _Encoder(tmp, width, height, Fraction(rate))
        for i in range(frames):
            img = bg.copy()
            x0 = int((width - bw) * (0.5 + 0.5 * np.sin(2 * np.pi * i / max(frames, 2))))
            y0 = int(0.6 * height - 0.5 * bh)
            img[y0:y0 + bh, x0:x0 + bw] = (220, 60, 40)
            noise = rng.integers(-3, 4, img.shape, dtype=np.int16)  # sensor noise: no two frames alike
            enc.write(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
        enc.close()
    return bg
