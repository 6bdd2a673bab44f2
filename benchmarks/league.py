"""League: every seed preset and the default model, trained on the same data for the same wall-clock budget,
evaluated on the same test split. Writes benchmarks/results/league.json and league.md.

    python benchmarks/league.py --cpu            # 64x64, 90 s per model: <= 15 minutes on a laptop CPU
    python benchmarks/league.py --gpu            # 192x192, 10 minutes per model, on a GPU
    python benchmarks/league.py --quick          # smoke run: tiny data, a few seconds per model

Fairness: the same dataset, seed, batch size, optimizer (AdamW, OneCycle) and loss for every model. Each
model's schedule spans the steps it can do in the budget, estimated from a short timing of its training step
(so a slow model is not cut off in the middle of its warm-up); the budget is also a hard stop. Ranked by
score = (mask IoU + depth delta<1.25) / 2 on the test split.

Where real photos are at hand (--real-bg-dir / --real-fg-dir, by default ../shared/realsets/fg_bg_dataset when it
exists), every model is also scored on the real-photo benchmark (benchmarks/real_photos.py) at its composites'
own size, beside the differencing baseline: `--real-pairs` composites under each of `--real-conditions`.
`--steps N` trains every model for N steps instead of a time budget (fair on a machine shared with other work),
and `--set section.key=value` changes the training config of every model alike (e.g. capture.shift_px=3).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskdepth import __version__
from maskdepth.predict import load_model
from maskdepth.realbench import CONDITIONS, load_pairs, score_baselines, score_condition
from real_photos import REALSET, make_pairs_dataset

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
MODELS = ["maskdepth", "seed-resnet-twobranch", "seed-densenet", "seed-resunet", "seed-dilated-pixelshuffle",
          "seed-updown"]
PROFILES = {  # side, budget per model (s), batch size, loader workers, dataset: backgrounds, foregrounds, per pair
    "quick": dict(size=32, budget_s=2.0, batch_size=8, workers=0, backgrounds=2, foregrounds=4, per_pair=2),
    "cpu": dict(size=64, budget_s=90.0, batch_size=16, workers=1, backgrounds=20, foregrounds=32, per_pair=1),
    "gpu": dict(size=192, budget_s=600.0, batch_size=64, workers=8, backgrounds=100, foregrounds=200, per_pair=8),
}


def make_data(out: Path, p: dict, seed: int) -> Path:
    """The league's dataset (kept between runs: its folder name says how it was made)."""
    from maskdepth.cli import main as cli

    path = out / f"league-{p['size']}-{p['backgrounds']}x{p['foregrounds']}x{p['per_pair']}-s{seed}"
    if not (path / "metadata.json").is_file():
        rc = cli(["data", "make", str(path), "--backgrounds", str(p["backgrounds"]), "--foregrounds",
                  str(p["foregrounds"]), "--per-pair", str(p["per_pair"]), "--size", str(p["size"]),
                  "--seed", str(seed)])
        if rc:
            sys.exit(f"league: `maskdepth data make {path}` failed")
    return path


def real_pairs(args, work: Path) -> list:
    """The real-photo benchmark's composites, or [] where there are no real photos (or --real-pairs 0)."""
    if not args.real_pairs or not (args.real_bg_dir.is_dir() and args.real_fg_dir.is_dir()):
        return []
    data = make_pairs_dataset(args.real_bg_dir, args.real_fg_dir, work / "real", size=192, backgrounds=30,
                              cutouts=15, fg_scale="0.35:0.75", seed=args.seed, workers=2)
    return load_pairs(data, limit=args.real_pairs)


def sample_rate(name: str, size: int, batch_size: int, device: torch.device, kwargs: dict | None = None,
                amp: bool = False) -> float:
    """Training samples per second of model `name` (with builder `kwargs`; forward under bf16 autocast on CUDA
    with `amp`, backward, AdamW): the faster of two steps after a warm-up step (the faster, since other work on
    the machine only ever slows a step down)."""
    from maskdepth.models import create_model

    model = create_model(name, **{"depth_max": 10.0, **(kwargs or {})}).to(device).train()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.rand(batch_size, 3, size, size, device=device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            mask, depth = model(x, x)
        (mask.float().mean() + depth.float().mean()).backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch_size / min(times[1:])


def train_one(name: str, steps: int, data: Path, run: Path, p: dict, args, device: torch.device) -> dict:
    """Train `name` for `steps` steps or the time budget, whichever ends first (no budget with --steps)."""
    from maskdepth.train.config import load_config
    from maskdepth.train.loop import train
    from maskdepth.train.rundir import read_metrics

    config = load_config(None, overrides={
        "data.dir": str(data), "data.size": p["size"], "data.eval_split": "", "data.workers": p["workers"],
        "model.name": name, "optim.lr": args.lr, "schedule.name": "onecycle",
        "train.steps": steps, "train.batch_size": p["batch_size"], "train.seed": args.seed,
        "train.time_budget_s": 0.0 if args.steps else p["budget_s"], "train.device": str(device),
        "train.log_every": 10, "train.samples": 0,
    }, sets=args.set)
    t0 = time.perf_counter()
    train(config, run, force=True, argv=["league"])
    wall = time.perf_counter() - t0
    logs = [r for r in read_metrics(run) if r.get("split") == "train" and "samples_per_s" in r]
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    trained_samples = state["step"] * p["batch_size"]
    return {"steps_planned": steps, "steps": state["step"], "train_time_s": state["train_time"],
            "wall_s": wall, "train_samples": trained_samples,
            "samples_per_s": trained_samples / max(state["train_time"], 1e-9),
            "final_train_loss": logs[-1]["loss"].get("total") if logs else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--cpu", action="store_const", const="cpu", dest="profile", help="64x64, 90 s per model")
    size.add_argument("--gpu", action="store_const", const="gpu", dest="profile", help="192x192, 600 s per model")
    size.add_argument("--quick", action="store_const", const="quick", dest="profile", help="smoke run")
    ap.add_argument("--budget-s", type=float, help="training wall-clock seconds per model (overrides the profile)")
    ap.add_argument("--size", type=int, help="side in pixels (overrides the profile)")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--data", type=Path, help="dataset folder to use instead of making one")
    ap.add_argument("--work", type=Path, help="where datasets and runs go (default: a temporary folder)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, help="loader worker processes (overrides the profile)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, help="train every model this many steps (no time budget)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="training config override for every model (repeatable)")
    ap.add_argument("--real-bg-dir", type=Path, default=REALSET / "bg", help="real background photos")
    ap.add_argument("--real-fg-dir", type=Path, default=REALSET / "fg", help="real RGBA cutouts")
    ap.add_argument("--real-pairs", type=int, default=300, help="real composites scored (0: none)")
    ap.add_argument("--real-conditions", nargs="+", choices=CONDITIONS, default=["aligned", "shifted"])
    ap.add_argument("--out", type=Path, help="JSON to write (default results/league.json for --cpu, "
                    "league-gpu.json, league-quick.json); the Markdown table goes beside it")
    args = ap.parse_args(argv)
    from maskdepth.device import resolve_device
    from maskdepth.evaluate import evaluate_checkpoint
    from maskdepth.models import create_model
    from maskdepth.train.loop import cpu_threads_beside

    p = dict(PROFILES[args.profile or "cpu"])
    if args.budget_s:
        p["budget_s"] = args.budget_s
    if args.size:
        p["size"] = args.size
    if args.workers is not None:
        p["workers"] = args.workers
    device = resolve_device(args.device, local_rank=0)  # one process: its GPU by index, as training names it
    torch.manual_seed(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="maskdepth-league-"))
    data = args.data or make_data(work, p, args.seed)
    started = time.perf_counter()
    # every model's step time first; then one short run so that the first model does not pay for the
    # process's one-time costs (lazy imports, first kernels of the loss)
    if device.type == "cpu":  # timed with the threads training will use
        torch.set_num_threads(cpu_threads_beside(p["workers"]))
    steps = {name: args.steps or max(10, int(p["budget_s"] * sample_rate(name, p["size"], p["batch_size"], device)
                                             / p["batch_size"])) for name in args.models}
    real = real_pairs(args, work)
    baselines = {c: score_baselines(real, c, seed=args.seed) for c in args.real_conditions} if real else {}
    train_one("maskdepth-small", 2, data, work / "runs" / "warm-up", {**p, "budget_s": 0.0}, args, device)
    rows = []
    for name in args.models:
        print(f"league: {name} ({p['budget_s']:.0f} s at {p['size']}x{p['size']}, at most {steps[name]} steps)",
              file=sys.stderr)
        run = work / "runs" / name
        row = {"model": name, "params": sum(t.numel() for t in create_model(name, depth_max=10.0).parameters())}
        row.update(train_one(name, steps[name], data, run, p, args, device))
        t0 = time.perf_counter()
        record, _ = evaluate_checkpoint(run / "last.safetensors", data, "test", batch_size=p["batch_size"],
                                        size=p["size"], device=str(device), workers=p["workers"], progress=False)
        row["eval_s"] = time.perf_counter() - t0
        m = record["metrics"]
        row["metrics"] = m
        row["score"] = (m["mask_iou"] + m["depth_delta1"]) / 2
        if real:
            predictor = load_model(run / "last.safetensors", device, native=True)
            row["real"] = {c: score_condition(predictor, real, c, seed=args.seed, baselines=baselines[c])
                         for c in args.real_conditions}
        rows.append(row)
    rows.sort(key=lambda r: r["score"], reverse=True)
    result = {
        "benchmark": "league", "profile": args.profile or "cpu", "size": p["size"], "budget_s": p["budget_s"],
        "batch_size": p["batch_size"], "data": str(data), "test_samples": record["samples"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "maskdepth": __version__, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "total_s": time.perf_counter() - started, "ranking": rows,
    }
    out = args.out or RESULTS / {"cpu": "league.json"}.get(result["profile"], f"league-{result['profile']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"League ({result['profile']}): {result['size']}x{result['size']}, {result['budget_s']:.0f} s "
             f"training per model, batch {result['batch_size']}, {result['test_samples']} test samples; "
             f"{result['device']}, {result['date']}.", "",
             "| rank | model | params | train img/s | steps | score | mask IoU | depth RMSE | depth δ<1.25 | "
             "depth AbsRel |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(result["ranking"], 1):
        m = r["metrics"]
        lines.append(f"| {i} | {r['model']} | {r['params'] / 1e6:.2f} M | {r['samples_per_s']:.1f} | {r['steps']} "
                     f"| {r['score']:.3f} | {m['mask_iou']:.3f} | {m['depth_rmse']:.3f} | {m['depth_delta1']:.3f} "
                     f"| {m['depth_absrel']:.3f} |")
    real = [r for r in result["ranking"] if r.get("real")]
    if real:
        conds = list(real[0]["real"])
        lines += ["", "Real photos (mask IoU at the composites' size; differencing baseline at its best fixed "
                      "threshold):", "",
                  "| model | " + " | ".join(f"{c} | {c} differencing" for c in conds) + " |",
                  "| --- |" + " ---: |" * (2 * len(conds))]
        for r in real:
            cells = [f"{r['real'][c]['model']['mask_iou']:.3f} | {r['real'][c]['baseline']['mask_iou']:.3f}"
                     for c in conds]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
