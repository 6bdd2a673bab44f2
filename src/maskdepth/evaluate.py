"""`maskdepth evaluate`: every metric of a checkpoint on a dataset split, and the pass the train loop shares.

`evaluate_batches` runs a model over batches and returns whole-set metrics (maskdepth.metrics, all-reduced
under DDP), mean losses, and the worst-k samples by mask IoU and by depth RMSE for a picture grid.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from maskdepth.checkpoint import load_model_from_checkpoint
from maskdepth.data.format import DatasetDir
from maskdepth.data.loader import make_loader
from maskdepth.device import resolve_device, to_device
from maskdepth.fileio import OutputKind, atomic_write_text, prepare_output_dir
from maskdepth.metrics import METRIC_NAMES, Metrics
from maskdepth.progress import track
from maskdepth.viz import colorize_depth, make_grid, save_png

Batch = dict[str, Tensor]
# columns of a sample grid, left to right
EVAL_OUTPUT = OutputKind("evaluation folder", markers=("metrics.json",),
                         owned=("metrics.json", "metrics.md", "worst.png"))
GRID_COLUMNS = ("bg", "image", "true mask", "pred mask", "true depth", "pred depth")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    losses: dict[str, float] = field(default_factory=dict)  # mean over samples of each loss term
    samples: int = 0
    # criterion -> [(score, sample dict on the CPU with "pred_mask" / "pred_depth")], worst first
    worst: dict[str, list[tuple[float, Batch]]] = field(default_factory=dict)


def forward_batch(model: nn.Module, bg: Tensor, image: Tensor, tta: bool = False) -> tuple[Tensor, Tensor]:
    """(mask_logits, depth); with `tta` the mean of the plain and the horizontally flipped prediction
    (probabilities averaged, then back to logits)."""
    mask_logits, depth = model(bg, image)
    if not tta:
        return mask_logits, depth
    f_logits, f_depth = model(bg.flip(-1), image.flip(-1))
    prob = (torch.sigmoid(mask_logits.float()) + torch.sigmoid(f_logits.float().flip(-1))) / 2
    return torch.logit(prob, eps=1e-6), (depth.float() + f_depth.float().flip(-1)) / 2


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[Batch], depth_max: float, *, aligned: bool = False,
                     loss_fn: nn.Module | None = None, tta: bool = False, autocast: bool = False,
                     worst_k: int = 0) -> EvalResult:
    """Whole-set metrics of `model` over `batches` (already on the model's device). Under DDP each rank
    passes its own part and every rank gets the same result."""
    was_training = model.training
    model.eval()
    metrics = Metrics(depth_max, aligned=aligned)
    device = next(model.parameters()).device
    loss_sums: dict[str, Tensor] = {}  # on the device: no host sync per batch
    n = 0
    worst: dict[str, list[tuple[float, int, Batch]]] = {"mask_iou": [], "depth_rmse": []}
    try:
        for batch in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                mask_logits, depth = forward_batch(model, batch["bg"], batch["image"], tta)
            mask_logits, depth = mask_logits.float(), depth.float()
            bs = batch["image"].shape[0]
            metrics.update(mask_logits, depth, batch)
            if loss_fn is not None:
                _, terms = loss_fn(mask_logits, depth, batch)
                for k, v in terms.items():
                    loss_sums[k] = loss_sums.get(k, 0.0) + v.double() * bs
            if worst_k:
                _keep_worst(worst, metrics.per_sample(mask_logits, depth, batch), batch, mask_logits, depth,
                            worst_k, n)
            n += bs
    finally:
        model.train(was_training)
    losses, samples = _pool_over_ranks({k: v.item() for k, v in loss_sums.items()}, n)
    result = EvalResult(metrics.compute(), losses, samples=samples)
    result.worst = {k: [(-s if k == "mask_iou" else s, b) for s, _, b in sorted(v, reverse=True)]
                    for k, v in worst.items()}
    return result


def _keep_worst(heaps: dict[str, list], per_sample: dict[str, Tensor], batch: Batch, mask_logits: Tensor,
                depth: Tensor, k: int, offset: int) -> None:
    """Keep the k lowest-IoU and k highest-RMSE samples (CPU copies) in min-heaps of (badness, index, sample)."""
    for name, badness in (("mask_iou", -per_sample["mask_iou"]), ("depth_rmse", per_sample["depth_rmse"])):
        for i, b in enumerate(badness.tolist()):
            if math.isnan(b):
                continue
            heap = heaps[name]
            if len(heap) == k and b <= heap[0][0]:
                continue
            item = (b, offset + i, cpu_sample(batch, mask_logits, depth, i))
            heapq.heappush(heap, item) if len(heap) < k else heapq.heapreplace(heap, item)


def cpu_sample(batch: Batch, mask_logits: Tensor, depth: Tensor, i: int) -> Batch:
    """Row i of a batch and its prediction, on the CPU, as `sample_grid` takes it."""
    sample = {key: batch[key][i].float().cpu() for key in ("bg", "image", "mask", "depth")}
    sample["pred_mask"] = torch.sigmoid(mask_logits[i].float()).cpu()
    sample["pred_depth"] = depth[i].float().cpu()
    return sample


def _pool_over_ranks(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    """(mean per sample of each summed loss, samples) over all ranks. A rank may have had no batch at all,
    so its sums may be empty: gathered as objects, not all-reduced as a tensor of known length."""
    parts = [(sums, n)]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (sums, n))
    total = sum(count for _, count in parts)
    names = next((part.keys() for part, _ in parts if part), [])
    return {k: sum(part.get(k, 0.0) for part, _ in parts) / max(total, 1) for k in names}, total


def sample_grid(samples: list[Batch], depth_max: float):
    """One row per sample: bg, image, true mask, predicted mask, true depth, predicted depth (uint8 RGB);
    both depths coloured on the same 0..depth_max scale."""
    rows = [[s["bg"], s["image"], s["mask"], s["pred_mask"], colorize_depth(s["depth"], 0.0, depth_max),
             colorize_depth(s["pred_depth"], 0.0, depth_max)] for s in samples]
    return make_grid(rows, labels=GRID_COLUMNS)


# -- the command ---------------------------------------------------------------------------------------------

def metrics_table(metrics: dict[str, float]) -> list[tuple[str, float, str]]:
    """(name, value, description) in the metrics module's order; aligned metrics only when present."""
    return [(name, metrics[name], desc) for name, (desc, _) in METRIC_NAMES.items() if name in metrics]


def markdown_table(metrics: dict[str, float], title: str) -> str:
    lines = [f"# {title}", "", "| metric | value | meaning |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value:.4f} | {desc.replace('|', chr(92) + '|')} |"  # a bare | would end the cell
              for name, value, desc in metrics_table(metrics)]
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(ckpt: str | os.PathLike, data: str | os.PathLike, split: str = "test", *,
                        batch_size: int = 16, size: int | None = None, tta: bool = False, worst_k: int = 0,
                        device: str = "auto", workers: int = 2, limit: int = 0, progress: bool = True,
                        aligned: bool = False) -> tuple[dict[str, Any], EvalResult]:
    """Evaluate checkpoint `ckpt` on split `split` of dataset `data` at `size` (default: the checkpoint's
    training size). Depth metrics after per-image scale-and-shift alignment are added when `aligned`, and always
    for relative-depth datasets. Returns (JSON record, result)."""
    dev = resolve_device(device)
    dataset = DatasetDir(data)
    model, header = load_model_from_checkpoint(ckpt, map_location=dev)
    side = size or int(header.get("train_size", dataset.size)[0])
    loader = make_loader(data, split, batch_size, side, train=False, workers=workers,
                         pin_memory=dev.type == "cuda")
    # the loader knows its batch count (each worker forms its own last, partial batch)
    total = len(loader) if not limit else min(len(loader), math.ceil(limit / batch_size))
    batches = (to_device(b, dev) for b in first_samples(loader, limit))
    batches = track(batches, f"evaluate {split}", total=total, unit="batch",
                    enabled=progress)
    result = evaluate_batches(model, batches, model.depth_max, aligned=aligned or dataset.depth_unit == "relative", tta=tta,
                              autocast=dev.type == "cuda", worst_k=worst_k)
    record = {"checkpoint": str(ckpt), "model": header.get("model"), "data": str(data), "split": split,
              "size": side, "tta": tta, "samples": result.samples, "depth_unit": dataset.depth_unit,
              "depth_max": model.depth_max, "metrics": result.metrics}
    return record, result


def run(ckpt: str | os.PathLike, data: str | os.PathLike, split: str = "test", *, out: str | os.PathLike,
        worst_k: int = 8, force: bool = False, **options: Any) -> dict[str, Any]:
    """`maskdepth evaluate`: print the table and write metrics.json, metrics.md and worst.png into `out`.
    `options` go to evaluate_checkpoint."""
    out = prepare_output_dir(out, EVAL_OUTPUT, force=force, inputs=[ckpt, data])
    record, result = evaluate_checkpoint(ckpt, data, split, worst_k=worst_k, **options)
    print(format_table(result.metrics))
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "metrics.md", markdown_table(result.metrics, f"{Path(ckpt).name} on "
                                                                          f"{Path(data).name}/{split}"))
    written = ["metrics.json", "metrics.md"]
    rows = [b for _, b in result.worst["mask_iou"]] + [b for _, b in result.worst["depth_rmse"]]
    if rows:
        save_png(out / "worst.png", sample_grid(rows, record["depth_max"]))
        written.append("worst.png")
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return record


def first_samples(batches: Iterable[Batch], limit: int) -> Iterator[Batch]:
    """Batches until at least `limit` samples have passed (0: all of them)."""
    seen = 0
    for batch in batches:
        if limit and seen >= limit:
            return
        seen += batch["image"].shape[0]
        yield batch


def format_table(metrics: dict[str, float]) -> str:
    rows = metrics_table(metrics)
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>9.4f}  {desc}" for name, value, desc in rows)
