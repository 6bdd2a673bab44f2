"""`maskdepth demo`: the whole pipeline on a laptop in a few minutes, ending in an HTML report.

procedural dataset -> evaluate the shipped default weights -> fine-tune them briefly -> evaluate again ->
predict held-out pairs from files -> curves -> report.html. Every step uses the same public functions as the CLI.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from maskdepth import __version__
from maskdepth.checkpoint import DEFAULT_WEIGHTS
from maskdepth.codecs import decode_depth_png, decode_gray, decode_rgb, encode_png
from maskdepth.data.format import DatasetDir
from maskdepth.data.make import MakeConfig, make_dataset
from maskdepth.data.shards import iter_shard
from maskdepth.errors import UserError
from maskdepth.evaluate import evaluate_checkpoint
from maskdepth.fileio import OutputKind, atomic_write_bytes, atomic_write_text, prepare_output_dir
from maskdepth.metrics import METRIC_NAMES
from maskdepth.plot import plot_run
from maskdepth.predict import load_model
from maskdepth.prediction_files import save_prediction
from maskdepth.train.config import load_config
from maskdepth.train.loop import train
from maskdepth.viz import colorize_depth

MARKER = "demo.json"
# what the demo writes: its marker and report, and the dataset, run and prediction folders it makes
DEMO_OUTPUT = OutputKind("demo folder", markers=(MARKER,), owned=(MARKER, "report.html", "data/*", "run/*", "pairs/*"))
HEADLINE = ["mask_iou", "mask_boundary_f", "depth_absrel", "depth_rmse", "depth_delta1"]


@dataclass(frozen=True)
class DemoConfig:
    """About a minute and a half on 2 CPU cores; every number here can be raised for a longer demo. Many rooms
    with few placements each: with few rooms, fine-tuning pulls the metric depth scale towards them."""

    size: int = 96
    backgrounds: int = 30
    foregrounds: int = 12
    per_pair: int = 2
    steps: int = 120
    batch_size: int = 16
    lr: float = 3e-4
    pairs: int = 6
    seed: int = 7


def run_demo(out: str | os.PathLike = "runs/demo", cfg: DemoConfig = DemoConfig(),
             workers: int | None = None) -> Path:
    """Run every step into `out` and return the path of report.html."""

    out = _prepare(Path(out))
    workers = workers or min(2, os.cpu_count() or 1)
    default = _packaged(DEFAULT_WEIGHTS)
    steps = ["make a procedural dataset", "evaluate the default weights", "fine-tune", "evaluate the fine-tuned model",
             "predict held-out pairs from files", "write the report"]
    timings: dict[str, float] = {}
    clock = _Steps(steps, timings)

    with clock():
        make_dataset(out / "data", MakeConfig(size=(cfg.size, cfg.size), backgrounds=cfg.backgrounds,
                                              foregrounds=cfg.foregrounds, per_pair=cfg.per_pair, seed=cfg.seed,
                                              shard_size=500, test_fraction=0.2), workers=workers)
    before = None
    with clock():
        if default is not None:
            before, _ = evaluate_checkpoint(default, out / "data", "test", size=cfg.size, workers=workers)
        else:
            print("  no default weights in this installation: training from scratch instead")
    with clock():
        overrides = {"data.dir": str(out / "data"), "data.size": cfg.size, "data.workers": 1,
                     "model.init": "default" if default is not None else "", "train.steps": cfg.steps,
                     "train.epochs": 1, "train.batch_size": cfg.batch_size, "optim.lr": cfg.lr,
                     "schedule.name": "cosine", "train.log_every": 10, "train.device": "auto",
                     "train.checkpoint_every": cfg.steps,
                     # as the shipped config finetune.toml: a few rooms and small batches must not re-estimate BatchNorm
                     "train.freeze_bn": default is not None}
        train(load_config(None, overrides=overrides), out / "run", force=True)
    with clock():
        after, _ = evaluate_checkpoint(out / "run" / "last.safetensors", out / "data", "test", size=cfg.size,
                                       workers=workers)
    with clock():
        pairs = _predict_pairs(out, out / "run" / "last.safetensors", cfg.pairs)
    with clock():
        curves = plot_run(out / "run", out / "run" / "curves.png")
        report = _write_report(out, cfg, before, after, pairs, curves, timings)
    print(f"demo finished in {sum(timings.values()):.0f} s: open {report}")
    return report


class _Steps:
    """Numbered step lines with their duration (the long steps show their own progress too)."""

    def __init__(self, names: list[str], timings: dict[str, float]):
        self.names, self.timings, self.i = names, timings, 0

    def __call__(self):
        @contextlib.contextmanager
        def step():
            name = self.names[self.i]
            self.i += 1
            print(f"demo [{self.i}/{len(self.names)}] {name} ...", flush=True)
            t0 = time.perf_counter()
            yield
            self.timings[name] = time.perf_counter() - t0
            print(f"demo [{self.i}/{len(self.names)}] {name}: done in {self.timings[name]:.0f} s", flush=True)

        return step()


def _prepare(out: Path) -> Path:
    """A folder holding an earlier demo is replaced (only what the demo wrote); anything else is refused."""

    out = prepare_output_dir(out, DEMO_OUTPUT, force=True)
    atomic_write_text(out / MARKER, json.dumps({"what": "maskdepth demo output; rerunning the demo replaces "
                                                        "this folder"}) + "\n")
    return out


def _packaged(relative: str) -> Path | None:
    p = files("maskdepth").joinpath(relative)
    return Path(str(p)) if p.is_file() else None


def _predict_pairs(out: Path, ckpt: Path, n: int) -> list[dict[str, str]]:
    """Write `n` held-out (bg, image) pairs as ordinary files, predict them through the file API, and keep the
    pictures the report shows."""

    ds = DatasetDir(out / "data")
    predictor = load_model(ckpt)
    rows = []
    for key, sample in _first_samples(ds, n, iter_shard):
        meta = json.loads(sample["json"])
        bg_rgb, bg_depth = ds.background(int(meta["bg"]))
        folder = out / "pairs" / key
        atomic_write_bytes(folder / "bg.png", encode_png(bg_rgb))
        atomic_write_bytes(folder / "image.jpg", sample["fg_bg.jpg"])
        pred = predictor.predict(folder / "bg.png", folder / "image.jpg")
        save_prediction(pred, decode_rgb(sample["fg_bg.jpg"]), folder / "prediction", predictor.depth, force=True)
        true_depth = decode_depth_png(sample["depth.png"]).astype(np.float32) * ds.depth_scale
        lo, hi = float(true_depth[true_depth > 0].min()), float(true_depth.max())
        atomic_write_bytes(folder / "true_mask.png", encode_png(decode_gray(sample["mask.png"])))
        atomic_write_bytes(folder / "true_depth_color.png", encode_png(colorize_depth(true_depth, lo, hi)))
        # predicted depth on the same colour scale as the truth, so the two can be compared by eye
        atomic_write_bytes(folder / "pred_depth_color.png", encode_png(colorize_depth(pred.depth, lo, hi)))
        rows.append({"key": key, "folder": str(folder.relative_to(out))})
    return rows


def _first_samples(ds, n: int, iter_shard):
    taken = 0
    for shard in ds.shards("test"):
        for key, sample in iter_shard(shard):
            if taken >= n:
                return
            taken += 1
            yield key, sample


def _write_report(out: Path, cfg: DemoConfig, before: dict[str, Any] | None, after: dict[str, Any],
                  pairs: list[dict[str, str]], curves: Path, timings: dict[str, float]) -> Path:
    ds = DatasetDir(out / "data")
    esc = html.escape
    cols = ["default weights", "fine-tuned"] if before else ["trained"]
    head = "".join(f"<th>{c}</th>" for c in ["metric", *cols, "better"])
    body = []
    for name in METRIC_NAMES:
        if name not in after["metrics"]:
            continue
        desc, higher = METRIC_NAMES[name]
        vals = ([before["metrics"].get(name)] if before else []) + [after["metrics"][name]]
        cells = "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else "<td>-</td>" for v in vals)
        strong = " class='head'" if name in HEADLINE else ""
        body.append(f"<tr{strong}><td title='{esc(desc)}'>{esc(name)}</td>{cells}"
                    f"<td>{'higher' if higher else 'lower'}</td></tr>")
    pics = ["bg.png", "image.jpg", "true_mask.png", "prediction/mask.png", "prediction/overlay.png",
            "true_depth_color.png", "pred_depth_color.png"]
    titles = ["bg (input)", "image (input)", "true mask", "predicted mask", "overlay", "true depth",
              "predicted depth"]
    grid = ["<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"]
    for p in pairs:
        grid.append("<tr>" + "".join(f"<td><img src='{esc(p['folder'])}/{pic}'></td>" for pic in pics) + "</tr>")
    steps = "".join(f"<li>{esc(k)}: {v:.0f} s</li>" for k, v in timings.items())
    counts = ds.meta["counts"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>maskdepth demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} tr.head td{{font-weight:bold}}
img{{width:{max(cfg.size, 96)}px;image-rendering:pixelated}}</style></head><body>
<h1>maskdepth demo</h1>
<p>maskdepth {esc(__version__)}. From a picture of an empty scene (bg) and the same scene with something in it
(image), the model predicts the foreground's mask and the depth map in metres.</p>
<h2>Data</h2>
<p>Procedural rooms with exact depth: {counts['backgrounds']} rooms, {counts['foregrounds']} foregrounds,
{counts['train']} training and {counts['test']} test composites at {cfg.size}x{cfg.size}; test rooms are never
trained on. Rebuild with <code>{esc(ds.meta.get('command', ''))}</code>.</p>
<h2>Metrics on the held-out rooms</h2>
<table><tr>{head}</tr>{''.join(body)}</table>
<p>{esc(after['samples'] and str(after['samples']))} test samples. The default weights were trained on other
rooms and cutouts; fine-tuning ran {cfg.steps} steps of {cfg.batch_size} on this dataset.</p>
<h2>Predictions on held-out pairs</h2>
<p>Each pair was written as ordinary files and predicted through <code>maskdepth.load_model(...).predict</code>;
the depth colours use the true depth's range.</p>
<table>{''.join(grid)}</table>
<h2>Training curves</h2>
<img src="{esc(str(curves.relative_to(out)))}" style="width:100%;image-rendering:auto">
<h2>Time</h2><ul>{steps}</ul>
</body></html>
"""
    report = out / "report.html"
    atomic_write_text(report, page)
    return report


def check(cfg: DemoConfig) -> None:
    if cfg.size < 32 or cfg.steps < 1 or cfg.pairs < 1:
        raise UserError("demo: --size must be at least 32, --steps and --pairs at least 1")
