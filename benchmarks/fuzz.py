"""The mutation run: every command on seeded mutations of its inputs, each under a timeout, classified.

Builds a tiny world (a procedural dataset, a seed-layout zip, a bg/image pair, a checkpoint, a run's
metrics.jsonl), then for each case copies what the command reads into a fresh folder, damages one input with a
seeded mutation (benchmarks/mutate.py: truncation, flipped bytes, zeroed headers, tar header fields with fixed-up
checksums, crafted zips, JSON values of the wrong type, missing keys, absurd sizes, crafted checkpoint headers)
and runs the command in a forked child (the package already imported, so a case costs what the command costs).

Each case is one of: ok (exit 0), clear error (exit 2, one `maskdepth: error:` line, no traceback), traceback,
hang (past the timeout), other (any other exit, e.g. killed for memory); and separately flagged when it wrote
outside its target folder or changed or removed one of its inputs. Peak memory (max RSS of the child) is kept.

    nice .venv/bin/python benchmarks/fuzz.py --cases 1200      # the full run; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import io
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutate import BYTE_MUTATIONS, mutate_json, mutate_tar, mutate_zip, png_claiming_size  # noqa: E402

OUTCOMES = ("ok", "clear error", "traceback", "hang", "other")
TRAIN_ARGS = ["--model", "maskdepth-small", "--size", "32", "--batch-size", "4", "--steps", "1", "--set",
              "train.samples=0", "--set", "data.eval_split="]


@dataclasses.dataclass
class World:
    root: Path
    data: Path
    zip: Path
    bg: Path
    image: Path
    ckpt: Path
    run: Path


def build_world(root: Path) -> World:
    """The inputs every case starts from (a few seconds)."""
    import numpy as np
    import torch
    from PIL import Image

    from maskdepth.checkpoint import save_checkpoint
    from maskdepth.data.make import MakeConfig, make_dataset
    from maskdepth.models import create_model

    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    make_dataset(data, MakeConfig(size=(32, 32), backgrounds=3, foregrounds=2, per_pair=2, shard_size=4,
                                  test_fraction=0.34), workers=1, progress=False)
    rng = np.random.default_rng(0)

    def png(a) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    bg = rng.integers(60, 120, (24, 32, 3), dtype=np.uint8)
    img = bg.copy()
    img[6:18, 8:20] = (230, 40, 40)
    (root / "bg.png").write_bytes(png(bg))
    (root / "image.png").write_bytes(png(img))
    with zipfile.ZipFile(root / "seed.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bg/bg_1.png", png(bg))
        for k in range(1, 4):
            z.writestr(f"fg_bg/fg_bg_1_{k}.png", png(img))
            z.writestr(f"mask/mask_1_{k}.png", png(np.full((24, 32), 40 * k, np.uint8)))
            z.writestr(f"depth/depth_1_{k}.png", png(np.full((24, 32), 20 * k, np.uint8)))
    torch.manual_seed(0)
    save_checkpoint(root / "model.safetensors", create_model("maskdepth-small", width=8, depth_max=16.0),
                    {"train_size": [32, 32], "depth": {"unit": "metres", "scale": 0.001, "max": 16.0}})
    run = root / "run"
    run.mkdir()
    (run / "run.json").write_text("{}\n")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "split": "train", "loss": {"total": 1.0 / s}, "lr": 0.001}) + "\n"
        for s in range(1, 6)) + json.dumps({"step": 5, "split": "test", "metrics": {"mask_iou": 0.5}}) + "\n")
    return World(root, data, root / "seed.zip", root / "bg.png", root / "image.png", root / "model.safetensors",
                 run)


# ---------------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    family: str
    mutation: str
    argv: list[str]
    inputs: list[str]  # relative to the case folder: these must be unchanged afterwards


def _with_header(src: Path, dst: Path, header) -> None:
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(src)), str(dst), metadata={"maskdepth": json.dumps(header)})


def _header(ckpt: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        return json.loads(f.metadata()["maskdepth"])


def _dataset_command(rng: random.Random, d: str, ckpt: str, fast: bool) -> list[str]:
    choices = [["data", "stats", d]] * 3 + [["data", "show", d, "--out", "out/grid.png", "--n", "4"]] * 3 + \
              [["evaluate", ckpt, "--data", d, "--out", "out/eval", "--workers", "0"]] * 3 + \
              [["train", "--data", d, "--out", "out/run", "--workers", "0", *TRAIN_ARGS]]
    if not fast:
        choices.append(["train", "--data", d, "--out", "out/run", "--workers", "1", *TRAIN_ARGS])
    return rng.choice(choices)


def _damage(raw: bytes, rng: random.Random, special: Callable[[bytes, random.Random], tuple[str, bytes]],
            p: float) -> tuple[str, bytes]:
    """The format-aware mutation `special` with probability p, else a plain byte mutation: (name, bytes)."""
    if rng.random() < p:
        return special(raw, rng)
    name = rng.choice(sorted(BYTE_MUTATIONS))
    return name, BYTE_MUTATIONS[name](raw, rng)


def _mutate_json_bytes(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    name, obj = mutate_json(json.loads(raw), rng)
    return name, json.dumps(obj).encode()


def make_case(world: World, folder: Path, rng: random.Random, family: str, fast: bool) -> Case:
    """Copy what the case reads into `folder`, damage one input, and return the command."""
    inp = folder / "in"
    inp.mkdir(parents=True)
    (folder / "out").mkdir()
    ckpt = inp / "model.safetensors"
    shutil.copy(world.ckpt, ckpt)
    if family in ("shard", "metadata", "background"):
        data = Path(shutil.copytree(world.data, inp / "data"))
        argv = _dataset_command(rng, "in/data", "in/model.safetensors", fast)
        if family == "shard":  # a shard the command reads: evaluate reads the test split, the others train
            split = "test" if argv[0] == "evaluate" else "train"
            p = rng.choice(sorted((data / "shards").glob(f"{split}-*.tar")))
            name, raw = _damage(p.read_bytes(), rng, mutate_tar, 0.5)
        elif family == "metadata":
            p = data / "metadata.json"
            name, raw = _damage(p.read_bytes(), rng, _mutate_json_bytes, 0.8)
        else:  # or a header claiming a huge picture, CRC fixed up
            p = rng.choice(sorted((data / "backgrounds").glob("bg-*.png")))
            name, raw = _damage(p.read_bytes(), rng, lambda raw, rng: ("ihdr-size", png_claiming_size(
                raw, rng.choice([1, 9000, 60000]), rng.choice([1, 9000, 60000]))), 0.3)
        p.write_bytes(raw)
        return Case(family, name if family == "metadata" else f"{p.name}:{name}", argv, ["in"])
    if family == "zip":
        z = inp / "seed.zip"
        mutation, raw = _damage(world.zip.read_bytes(), rng, mutate_zip, 0.6)
        z.write_bytes(raw)
        # two workers are processes started from scratch (seconds each): now and then, not every time
        workers = "2" if not fast and rng.random() < 0.05 else rng.choice(["0", "1"])
        return Case(family, mutation, ["data", "import", "in/seed.zip", "out/ds", "--workers", workers], ["in"])
    if family == "image":
        shutil.copy(world.bg, inp / "bg.png")
        target = rng.choice(["bg.png", "image.png"])
        shutil.copy(world.image, inp / "image.png")
        p = inp / target
        mutation = rng.choice(sorted(BYTE_MUTATIONS))
        p.write_bytes(BYTE_MUTATIONS[mutation](p.read_bytes(), rng))
        return Case(family, f"{target}:{mutation}", ["predict", "--ckpt", "in/model.safetensors", "--bg", "in/bg.png",
                                                     "--image", "in/image.png", "--out", "out/p", "--device", "cpu"],
                    ["in"])
    if family in ("ckpt-header", "ckpt-bytes"):
        if family == "ckpt-header":
            mutation, header = mutate_json(_header(world.ckpt), rng)
            _with_header(world.ckpt, ckpt, header)
        else:
            mutation = rng.choice(sorted(BYTE_MUTATIONS))
            ckpt.write_bytes(BYTE_MUTATIONS[mutation](ckpt.read_bytes(), rng))
        shutil.copy(world.bg, inp / "bg.png")
        shutil.copy(world.image, inp / "image.png")
        commands = [["predict", "--ckpt", "in/model.safetensors", "--bg", "in/bg.png", "--image", "in/image.png",
                     "--out", "out/p", "--device", "cpu"]]
        if family == "ckpt-header":
            commands += [["evaluate", "in/model.safetensors", "--data", str(world.data), "--out", "out/eval",
                          "--workers", "0", "--limit", "4"],
                         ["train", "--data", str(world.data), "--out", "out/run", "--workers", "0", *TRAIN_ARGS,
                          "--set", "model.init=in/model.safetensors"]]
            if not fast:
                commands.append(["export", "in/model.safetensors", "--onnx", "out/m.onnx", "--no-check"])
        return Case(family, mutation, rng.choice(commands), ["in"])
    if family == "metrics":
        run = Path(shutil.copytree(world.run, inp / "run"))
        lines = (run / "metrics.jsonl").read_bytes().splitlines()
        i = rng.randrange(len(lines))
        kind = rng.random()
        if kind < 0.5:
            mutation, rec = mutate_json(json.loads(lines[i]), rng)
            lines[i] = json.dumps(rec).encode()
        else:
            mutation = rng.choice(sorted(BYTE_MUTATIONS))
            lines[i] = BYTE_MUTATIONS[mutation](lines[i], rng)
        (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        return Case(family, f"line {i}:{mutation}", ["plot", "in/run", "--out", "out/curves.png"], ["in"])
    raise ValueError(family)


FAMILIES = ("shard", "metadata", "background", "zip", "image", "ckpt-header", "ckpt-bytes", "metrics")


def force_probes(world: World, base: Path) -> list[tuple[Case, Path]]:
    """Hand-made probes of --force against a command's own inputs and folders maskdepth did not write."""
    probes = []

    def folder(name: str) -> Path:
        f = base / f"force-{name}"
        (f / "out").mkdir(parents=True)
        return f

    f = folder("eval-into-run")
    run = f / "out" / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    shutil.copy(world.ckpt, run / "last.safetensors")
    probes.append((Case("force", "evaluate RUN/last --out RUN --force",
                        ["evaluate", "out/run/last.safetensors", "--data", str(world.data), "--out", "out/run",
                         "--force"], ["out/run"]), f))
    f = folder("train-over-data")
    shutil.copytree(world.data, f / "out" / "data")
    probes.append((Case("force", "train --data data --out . --force",
                        ["train", "--data", "out/data", "--out", "out", "--force", "--workers", "0", *TRAIN_ARGS],
                        ["out/data"]), f))
    f = folder("eval-over-data")
    shutil.copytree(world.data, f / "out" / "data")
    probes.append((Case("force", "evaluate --out DATASET --force",
                        ["evaluate", str(world.ckpt), "--data", "out/data", "--out", "out/data", "--force"],
                        ["out/data"]), f))
    f = folder("make-home")
    (f / "out" / "home" / "photos").mkdir(parents=True)
    (f / "out" / "home" / "photos" / "me.jpg").write_text("mine")
    (f / "out" / "home" / ".bashrc").write_text("mine")
    probes.append((Case("force", "data make ~ --force", ["data", "make", "out/home", "--force", "--size", "32",
                                                          "--quiet"], ["out/home"]), f))
    f = folder("make-notes")
    shutil.copytree(world.data, f / "out" / "data")
    (f / "out" / "data" / "notes.txt").write_text("mine")
    (f / "out" / "data" / "shards" / "README").write_text("mine")
    probes.append((Case("force", "data make OUT --force with the user's notes inside",
                        ["data", "make", "out/data", "--force", "--size", "32", "--backgrounds", "2",
                         "--foregrounds", "2", "--per-pair", "1", "--quiet"],
                        ["out/data/notes.txt", "out/data/shards/README"]), f))
    f = folder("predict-over-input")
    shutil.copy(world.image, f / "out" / "mask.png")
    probes.append((Case("force", "predict --image OUT/mask.png --out OUT --force",
                        ["predict", "--ckpt", str(world.ckpt), "--bg", str(world.bg), "--image", "out/mask.png",
                         "--out", "out", "--force"], ["out/mask.png"]), f))
    f = folder("plot-existing")
    shutil.copytree(world.run, f / "in" / "run")
    (f / "out" / "c.png").write_text("mine")
    probes.append((Case("force", "plot --out FILE (exists)", ["plot", "in/run", "--out", "out/c.png"],
                        ["out/c.png"]), f))
    return probes


# ---------------------------------------------------------------------------------------------------- running


def start_child(argv: list[str], cwd: Path, err_path: Path) -> int:
    """The pid of `maskdepth argv` running in a forked child (the package already imported) that leads its own
    process group (so it can be killed with its loader workers) and writes its stderr to `err_path`."""
    pid = os.fork()
    if pid == 0:  # the child: its own process group, so a hang is killed with its loader workers
        code = 99
        try:
            os.setsid()
            os.chdir(cwd)
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(fd, 2)
            # a test runner may have replaced sys.stdout/err with its own capture: write to the real fds
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            from maskdepth.cli import main

            code = int(main(argv) or 0)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what a traceback looks like to the user is what we classify
            traceback.print_exc()
            code = 99
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    return pid


def run_child(argv: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, float, float]:
    """(exit code or None if it hung, stderr, seconds, peak RSS in MiB) of `maskdepth argv` in a forked child
    that has the package already imported."""
    err_path = cwd / ".stderr"
    t0 = time.monotonic()
    pid = start_child(argv, cwd, err_path)
    deadline = t0 + timeout
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            code = None
            break
        time.sleep(0.005)
    if code is None:
        try:
            os.killpg(pid, signal.SIGKILL)  # loader workers left behind
        except ProcessLookupError:
            pass
    err = err_path.read_text(errors="replace") if err_path.exists() else ""
    err_path.unlink(missing_ok=True)
    return code, err, time.monotonic() - t0, usage.ru_maxrss / 1024


def classify(code: int | None, err: str) -> str:
    if code is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        return "ok"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if code == 2 and lines and lines[-1].startswith("maskdepth: error:") and err.count("maskdepth: error:") == 1:
        return "clear error"
    return "other"


def snapshot(folder: Path, skip: str = "out") -> dict[str, tuple[int, bytes]]:
    """Every file below `folder` except under `skip`: relative path -> (size, hash of the bytes)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        if rel.parts[:1] == (skip,):
            continue
        for name in files:
            p = Path(dirpath) / name
            try:
                data = p.read_bytes()
            except OSError:
                continue
            out[str(rel / name)] = (len(data), hash(data))
    return out


def _files_under(folder: Path, rels: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for r in rels:
        p = folder / r
        files = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else []
        for q in files:
            data = q.read_bytes()
            out[str(q.relative_to(folder))] = (len(data), hash(data))
    return out


def run_case(case: Case, folder: Path, root: Path, timeout: float) -> dict:
    inputs_before = _files_under(folder, case.inputs)
    outside_before = snapshot(folder)
    root_before = set(os.listdir(root))
    code, err, seconds, rss = run_child(case.argv, folder, timeout)
    outside_after = snapshot(folder)
    inputs_after = _files_under(folder, case.inputs)
    new_outside = sorted(set(outside_after) - set(outside_before))
    new_in_root = sorted(set(os.listdir(root)) - root_before - {folder.name})
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return {"family": case.family, "mutation": case.mutation, "argv": case.argv,
            "outcome": classify(code, err), "exit": code, "seconds": round(seconds, 3),
            "peak_rss_mib": round(rss, 1), "last_line": lines[-1][:300] if lines else "",
            "wrote_outside": new_outside + new_in_root, "inputs_changed": inputs_after != inputs_before}


def run_all(cases: int, seed: int, timeout: float, fast: bool = False, probes: bool = True,
            families: tuple[str, ...] = FAMILIES, on_case: Callable[[dict], None] | None = None,
            workdir: Path | None = None) -> list[dict]:
    """Build the world and run `cases` seeded mutation cases (plus the --force probes); returns the records."""
    import torch

    torch.set_num_threads(1)
    import maskdepth.cli  # noqa: F401 - imported once here, so each forked case starts warm
    tmp = Path(tempfile.mkdtemp(prefix="maskdepth-fuzz-", dir=workdir))
    try:
        world = build_world(tmp / "world")
        base = tmp / "cases"
        base.mkdir()
        rng = random.Random(seed)
        records = []
        todo: list[tuple[Case, Path]] = force_probes(world, base) if probes else []
        for i in range(cases):
            family = families[i % len(families)]
            folder = base / f"case-{i:05d}"
            todo.append((make_case(world, folder, random.Random(rng.getrandbits(64)), family, fast), folder))
            if len(todo) >= 8 or i == cases - 1:
                for case, f in todo:
                    rec = run_case(case, f, base, timeout)
                    records.append(rec)
                    if on_case:
                        on_case(rec)
                    shutil.rmtree(f, ignore_errors=True)
                todo = []
        for case, f in todo:
            records.append(run_case(case, f, base, timeout))
        return records
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarise(records: list[dict]) -> dict:
    by_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        by_family[r["family"]][r["outcome"]] += 1
    return {
        "cases": len(records),
        "outcomes": dict(collections.Counter(r["outcome"] for r in records)),
        "by_family": {f: dict(c) for f, c in sorted(by_family.items())},
        "wrote_outside": sum(bool(r["wrote_outside"]) for r in records),
        "inputs_changed": sum(r["inputs_changed"] for r in records),
        "peak_rss_mib": max((r["peak_rss_mib"] for r in records), default=0),
        "commands": dict(collections.Counter(" ".join(r["argv"][:2]) if r["argv"][0] == "data" else r["argv"][0]
                                             for r in records)),
    }


def bad(records: list[dict]) -> list[dict]:
    """Cases that break the promise: a traceback, a hang, another exit, a write outside, an input changed."""
    return [r for r in records if r["outcome"] in ("traceback", "hang", "other") or r["wrote_outside"]
            or r["inputs_changed"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.json"))
    args = ap.parse_args()
    t0 = time.time()
    done = [0]

    def show(rec: dict) -> None:
        done[0] += 1
        if rec in bad([rec]):
            print(f"  BAD {rec['family']} {rec['mutation']} {' '.join(rec['argv'][:3])}: {rec['outcome']} "
                  f"{rec['last_line'][:160]}", flush=True)
        if done[0] % 100 == 0:
            print(f"{done[0]} cases, {time.time() - t0:.0f} s", flush=True)

    records = run_all(args.cases, args.seed, args.timeout, on_case=show)
    import torch

    report = {
        "benchmark": "fuzz", "date": datetime.date.today().isoformat(), "seconds": round(time.time() - t0, 1),
        "machine": f"{os.cpu_count()} vCPU {platform.machine()}, torch {torch.__version__}",
        "seed": args.seed, "timeout_s": args.timeout, "summary": summarise(records), "bad": bad(records),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"{len(report['bad'])} bad case(s); wrote {args.out}")
    return 1 if report["bad"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
