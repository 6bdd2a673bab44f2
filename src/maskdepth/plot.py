"""`maskdepth plot RUN`: loss and metric curves of a training run as one PNG, drawn with Pillow.

One panel per loss term (train and evaluation on the same axes), one per evaluation metric, and the learning
rate; x is the training step. Values that are not finite numbers are left out.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskdepth.errors import UserError
from maskdepth.train.rundir import read_metrics
from maskdepth.viz import save_png

PANEL = (360, 220)  # width, height of one panel in pixels
MARGIN = (52, 22, 10, 24)  # left, top, right, bottom: room for tick labels and the title
TRAIN_COLOUR, EVAL_COLOUR = (31, 119, 180), (255, 127, 14)  # evaluation: the test split or held-out data
COLUMNS = 3

Series = dict[str, list[tuple[float, float]]]  # label -> [(step, value)]


def collect(records: list[dict]) -> dict[str, Series]:
    """Panel title -> {split ("train", "test", ...): points}, in first-seen order, from metrics.jsonl records."""
    panels: dict[str, Series] = {}

    def add(panel: str, label: str, step: float, value) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            panels.setdefault(panel, {}).setdefault(label, []).append((float(step), float(value)))

    for r in records:
        if r.get("event") == "skipped" or "step" not in r:
            continue
        label = str(r.get("split", "train"))
        for group, prefix in (("loss", "loss "), ("metrics", "")):
            values = r.get(group)
            for k, v in (values.items() if isinstance(values, dict) else ()):
                add(f"{prefix}{k}", label, r["step"], v)
        if "lr" in r:
            add("learning rate", label, r["step"], r["lr"])
    return panels


def draw_panel(title: str, series: Series):
    """One line chart: axes with min / max ticks, a polyline per series, the series named in the title."""

    w, h = PANEL
    left, top, right, bottom = MARGIN
    img = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(img)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - abs(y0) * 0.05 - 1e-6, y1 + abs(y1) * 0.05 + 1e-6

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    draw.text((2, top - 4), f"{y1:.3g}", fill="black")
    draw.text((2, h - bottom - 8), f"{y0:.3g}", fill="black")
    draw.text((left, h - bottom + 4), f"{x0:.0f}", fill="black")
    draw.text((w - right - 40, h - bottom + 4), f"step {x1:.0f}", fill="black")
    for label, pts in series.items():
        colour = TRAIN_COLOUR if label == "train" else EVAL_COLOUR
        points = [px(x, y) for x, y in pts]
        if len(points) == 1:
            (cx, cy), = points
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        else:
            draw.line(points, fill=colour, width=2)
    draw.text((left, 4), title, fill="black")
    x = left + draw.textlength(title + "  ")
    for label in series:
        draw.text((x, 4), label, fill=TRAIN_COLOUR if label == "train" else EVAL_COLOUR)
        x += draw.textlength(label + "  ")
    return img


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Draw RUN/metrics.jsonl into the PNG file `out` (default RUN/curves.png, the run's own, replaced on each
    call); returns the path written. An existing `out` is replaced only with `force`."""

    run = Path(run)
    if out is not None:
        if Path(out).suffix.lower() != ".png":
            raise UserError(f"{out}: the plot is a PNG file; give an --out path ending in .png")
        if Path(out).exists() and not force:
            raise UserError(f"{out}: already exists; choose another --out, or pass --force to replace it")
    panels = collect(read_metrics(run))
    if not panels:
        raise UserError(f"{run}/metrics.jsonl: no logged values yet; plot again after the run has logged")
    images = [np.asarray(draw_panel(title, s)) for title, s in panels.items()]
    rows = math.ceil(len(images) / COLUMNS)
    canvas = np.full((rows * PANEL[1], COLUMNS * PANEL[0], 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, COLUMNS)
        canvas[r * PANEL[1]:(r + 1) * PANEL[1], c * PANEL[0]:(c + 1) * PANEL[0]] = img
    path = Path(out) if out is not None else run / "curves.png"
    save_png(path, canvas)
    return path
