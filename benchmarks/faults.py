"""The fault run: SIGKILL `data make` and `train` at seeded moments, rerun / --resume, compare to an uninterrupted run.

For `data make` (a tiny dataset in several shards, 1 and 2 workers) and for `train` (maskdepth-small width 8 at
32x32, a few short epochs, a checkpoint every 2 steps, deterministic on the CPU) it runs the uninterrupted
reference once, then for each seeded moment starts the same command, kills its whole process group with SIGKILL
and finishes it: `data make` is rerun as it was, `train` goes on with `--resume` (or, killed before its first
state, starts again with `--force`, as its refusal says). Moments are delays drawn from a seeded RNG over the
reference's duration, plus moments aimed inside a shard or checkpoint write: the output folder is polled for the
atomic writer's temp file and the process killed the moment the n-th one is seen (retried from a clean folder
when the poll missed them all).

Checked: after each kill, before finishing, that last.safetensors (when present) loads with read_checkpoint and
state.pt with load_state; at the end, the dataset's files byte for byte, and the final weights tensor for tensor
(and last.safetensors byte for byte); no temp file left behind. Commands run in forked children that have the
package imported (benchmarks/fuzz.py's start_child), each in its own process group.

    nice .venv/bin/python benchmarks/faults.py      # 12 delays + 6 aimed moments per target; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz import run_child, start_child  # noqa: E402

MAKE_ARGS = ["--size", "32", "--backgrounds", "3", "--foregrounds", "4", "--per-pair", "4", "--shard-size", "2",
             "--test-fraction", "0.34", "--quiet"]
SHARDS = 48  # 3 x 4 x 2 flips x 4 per pair = 96 samples in shards of 2
TRAIN_ARGS = ["--model", "maskdepth-small", "--size", "32", "--batch-size", "8", "--epochs", "3", "--device", "cpu",
              "--workers", "1", "--set", "model.kwargs={width = 8}", "--set", "train.epoch_steps=3",
              "--set", "train.checkpoint_every=2", "--set", "train.deterministic=true", "--set", "optim.name=sgd",
              "--set", "schedule.name=onecycle", "--set", "train.samples=0", "--set", "train.log_every=1"]
TEMP_SUFFIX = ".tmp"
CHECKPOINT_TEMPS = (".state.pt.", ".last.safetensors.", ".best.safetensors.")  # atomic_path's temp names
TIMEOUT = 300.0


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob(f"*{TEMP_SUFFIX}")] if root.is_dir() else []


def _finish(argv: list[str], cwd: Path) -> None:
    code, err, _, _ = run_child(argv, cwd, TIMEOUT)
    if code != 0:
        raise RuntimeError(f"maskdepth {' '.join(argv)} exited {code}: {err.strip()[-500:]}")


def _kill_at(argv: list[str], cwd: Path, delay: float | None, watch: Path | None = None, nth: int = 1,
             prefixes: tuple[str, ...] = (".",)) -> dict:
    """Start `maskdepth argv`, SIGKILL its process group after `delay` seconds, or (delay None) the moment the
    nth temp file named with one of `prefixes` appears in `watch`. Says whether it was still running and whether
    a temp file was seen."""
    pid = start_child(argv, cwd, cwd / ".stderr-killed")
    t0, seen, names = time.monotonic(), False, set()
    while True:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return {"finished_first": True, "tmp_seen": seen, "at_s": round(time.monotonic() - t0, 3)}
        if delay is not None and time.monotonic() - t0 >= delay:
            break
        if watch is not None and watch.is_dir():
            names.update(n for n in os.listdir(watch) if n.endswith(TEMP_SUFFIX) and n.startswith(prefixes))
            if len(names) >= nth:
                seen = True
                break
        if time.monotonic() - t0 > TIMEOUT:
            break
        time.sleep(0.0005 if delay is None else 0.005)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return {"finished_first": False, "tmp_seen": seen, "at_s": round(time.monotonic() - t0, 3)}


def _kill_in_write(argv: list[str], cwd: Path, watch: Path, nth: int, prefixes: tuple[str, ...] = (".",)) -> dict:
    """_kill_at the nth temp file; when the poll saw too few before the command ended (a busy machine can hide a
    short write), start again from a clean folder aiming at the first one (6 tries in all)."""
    for tries in range(1, 7):
        kill = _kill_at(argv, cwd, None, watch=watch, nth=nth if tries == 1 else 1, prefixes=prefixes)
        if kill["tmp_seen"]:
            break
        for p in cwd.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
    return {**kill, "tries": tries}


def make_trials(work: Path, moments: int, aimed: int, seed: int) -> list[dict]:
    """`data make` killed at `moments` seeded delays and `aimed` moments inside shard writes (half of each with 1
    worker, half with 2), then rerun."""
    rng = random.Random(seed)
    records = []
    for workers in (1, 2):
        argv = ["data", "make", "OUT", *MAKE_ARGS, "--workers", str(workers)]
        ref = work / f"make-ref-{workers}"
        ref.mkdir()
        t0 = time.monotonic()
        _finish(argv, ref)
        duration = time.monotonic() - t0
        want = files(ref / "OUT")
        odd = workers == 2  # an odd count's extra moment goes to 2 workers
        plan = [("delay", rng.uniform(0.0, duration)) for _ in range(moments // 2 + (moments % 2) * odd)]
        plan += [("shard write", rng.randint(1, SHARDS)) for _ in range(aimed // 2 + (aimed % 2) * odd)]
        for i, (kind, at) in enumerate(plan):
            case = work / f"make-{workers}-{i}"
            case.mkdir()
            shards = case / "OUT" / "shards"
            kill = _kill_at(argv, case, at) if kind == "delay" else _kill_in_write(argv, case, shards, at)
            rec = {"target": "data make", "workers": workers, "moment": kind, **kill,
                   "tmp_after_kill": temp_files(case / "OUT"),
                   "shards_before_rerun": len(list(shards.glob("*.tar"))) if shards.is_dir() else 0}
            _finish(argv, case)
            got = files(case / "OUT")
            rec["identical"] = got == want
            rec["tmp_left"] = temp_files(case / "OUT")
            records.append(rec)
            shutil.rmtree(case)
    return records


def _loadable(run: Path) -> dict:
    """Whether what a killed run left can be read: last.safetensors by read_checkpoint, state.pt by load_state."""
    from maskdepth.checkpoint import read_checkpoint
    from maskdepth.train.resume import load_state
    from maskdepth.train.rundir import LAST, STATE

    out = {}
    for name, read in ((LAST, read_checkpoint), (STATE, load_state)):
        path = run / name if name == LAST else run
        if not (run / name).is_file():
            out[name] = None
            continue
        try:
            read(path)
            out[name] = True
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            out[name] = f"{type(e).__name__}: {e}"
    return out


def _weights(run: Path) -> dict:
    from maskdepth.checkpoint import read_checkpoint

    return read_checkpoint(run / "last.safetensors")[0]


def train_trials(work: Path, moments: int, aimed: int, seed: int) -> list[dict]:
    """`train` killed at `moments` seeded delays and `aimed` moments inside checkpoint writes, then resumed."""
    import torch

    from maskdepth.data.make import MakeConfig, make_dataset
    from maskdepth.train.rundir import STATE, is_run

    rng = random.Random(seed + 1)
    data = work / "data"
    make_dataset(data, MakeConfig(size=(32, 32), backgrounds=4, foregrounds=3, per_pair=2, shard_size=8,
                                  test_fraction=0.25), workers=1, progress=False)
    argv = ["train", "--data", str(data), "--out", "RUN", *TRAIN_ARGS]
    ref = work / "train-ref"
    ref.mkdir()
    t0 = time.monotonic()
    _finish(argv, ref)
    duration = time.monotonic() - t0
    want, want_bytes = _weights(ref / "RUN"), (ref / "RUN" / "last.safetensors").read_bytes()
    checkpoints = 10  # 9 steps, a state every 2 and at the end: about 5 checkpoints of 2 files each
    plan = [("delay", rng.uniform(0.0, duration)) for _ in range(moments)]
    plan += [("checkpoint write", rng.randint(1, checkpoints)) for _ in range(aimed)]
    records = []
    for i, (kind, at) in enumerate(plan):
        case = work / f"train-{i}"
        case.mkdir()
        run = case / "RUN"
        kill = _kill_at(argv, case, at) if kind == "delay" else _kill_in_write(argv, case, run, at, CHECKPOINT_TEMPS)
        rec = {"target": "train", "moment": kind, **kill, "tmp_after_kill": temp_files(run),
               "loadable": _loadable(run) if run.is_dir() else {}}
        if is_run(run) and (run / STATE).is_file():
            rec["finished_by"] = "--resume"
            _finish(["train", "--resume", "RUN"], case)
        elif run.exists():
            rec["finished_by"] = "--force"
            _finish([*argv, "--force"], case)
        else:
            rec["finished_by"] = "rerun"
            _finish(argv, case)
        got = _weights(run)
        rec["identical"] = got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        rec["same_file_bytes"] = (run / "last.safetensors").read_bytes() == want_bytes
        rec["tmp_left"] = temp_files(run)
        records.append(rec)
        shutil.rmtree(case)
    return records


def summarise(records: list[dict]) -> dict:
    killed = [r for r in records if not r["finished_first"]]
    checks = [v for r in records for v in r.get("loadable", {}).values() if v is not None]
    return {
        "moments": len(records), "killed": len(killed), "finished_before_kill": len(records) - len(killed),
        "identical": sum(r["identical"] for r in records),
        "loadable_checks": len(checks), "loadable": sum(v is True for v in checks),
        "tmp_seen_at_kill": sum(r["tmp_seen"] for r in records),
        "tmp_left_after_kill": sum(bool(r.get("tmp_after_kill")) for r in records),
        "tmp_left_at_end": sum(bool(r["tmp_left"]) for r in records),
    }


def run_all(make_moments: int, train_moments: int, aimed: int, seed: int, workdir: Path) -> dict:
    make = make_trials(workdir, make_moments, aimed, seed)
    train = train_trials(workdir, train_moments, aimed, seed)
    return {"data make": summarise(make), "train": summarise(train), "records": make + train}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-moments", type=int, default=12, help="seeded delays for data make")
    ap.add_argument("--train-moments", type=int, default=12, help="seeded delays for train")
    ap.add_argument("--aimed", type=int, default=6, help="moments aimed inside shard and checkpoint writes, each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "faults.json"))
    args = ap.parse_args()
    import torch

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        result = run_all(args.make_moments, args.train_moments, args.aimed, args.seed, Path(tmp))
    report = {"benchmark": "faults", "date": datetime.date.today().isoformat(), "seconds": round(time.time() - t0, 1),
              "machine": f"{os.cpu_count()} vCPU {platform.machine()}, torch {torch.__version__}", "seed": args.seed,
              **result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("data make", "train")}, indent=2))
    print(f"wrote {args.out}")
    bad = [r for r in report["records"] if not r["identical"] or r["tmp_left"]]
    return 1 if bad or any(s["loadable"] != s["loadable_checks"] for s in (report["data make"], report["train"])) else 0


if __name__ == "__main__":
    raise SystemExit(main())
