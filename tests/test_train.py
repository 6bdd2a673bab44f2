"""Training: config files and overrides, the loop (loss falls), exact resume after a crash, two-process DDP
equal to one process, the NaN guard, the generator with progressive resizing, the run folder, plot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskdepth.checkpoint import load_model_from_checkpoint, read_checkpoint
from maskdepth.cli import main as cli
from maskdepth.data.compose import ComposeConfig
from maskdepth.data.make import MakeConfig, make_dataset
from maskdepth.errors import UserError
from maskdepth.train import data as train_data
from maskdepth.train.config import load_config, parse_set, to_toml
from maskdepth.train.loop import train
from maskdepth.train.plan import make_plan, make_scheduler
from maskdepth.train.rundir import open_existing, read_metrics

SIZE = 32
# the small default model at 32x32, batches of 8, no loader worker processes unless a test says so
BASE = {"model.name": "maskdepth-small", "data.size": SIZE, "data.workers": 0, "train.batch_size": 8,
        "train.device": "cpu", "train.log_every": 1, "train.samples": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """96 train and 24 test samples at 32x32 in 16-sample shards (a second or so)."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    make_dataset(out, MakeConfig(size=(SIZE, SIZE), backgrounds=5, foregrounds=4, per_pair=3, shard_size=16,
                                 test_fraction=0.2), workers=1, progress=False)
    return out


def config(dataset: Path, **overrides):
    return load_config(None, overrides={"data.dir": str(dataset), **BASE, **overrides})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.safetensors")[0]


class Crash(Exception):
    """A run killed after a step (raised by `crash_at`'s hook)."""


def crash_at(n: int):
    """An on_step hook that kills the run after step `n`."""
    def hook(step: int) -> None:
        if step == n:
            raise Crash
    return hook


# -- config ------------------------------------------------------------------------------------------------

def test_config_round_trips_through_toml_and_overrides_apply(tmp_path):
    c = load_config(None, ["data.dir=/some/where", "optim.lr=1e-3", "train.resize=[[24, 1], [32, 2, 4]]",
                           "model.kwargs={width = 8}", "augment.hflip=0"], {"train.epochs": 3})
    assert (c.data.dir, c.optim.lr, c.train.epochs) == ("/some/where", 1e-3, 3)
    assert c.train.resize == [[24, 1], [32, 2, 4]] and c.model.kwargs == {"width": 8}
    assert c.augment["hflip"] == 0 and "crop" in c.augment  # defaults of the data side filled in
    path = tmp_path / "c.toml"
    path.write_text(to_toml(c))
    assert load_config(path) == c
    assert parse_set("data.dir=/a b/c") == ("data", "dir", "/a b/c")  # not TOML: taken as a string


@pytest.mark.parametrize("sets, message", [
    (["optim.lr=fast"], "expected a number"),
    (["nosuch.key=1"], "unknown section"),
    (["train.bogus=1"], "unknown key [train] bogus"),
    (["train.epochs=0"], "epochs"),
    (["train.resize=[[64]]"], "resize entry"),
    (["schedule.name=linear"], "schedule"),
    (["train.best_metric=accuracy"], "best_metric"),
    (["augment.nosuch=1"], "unknown key [augment] nosuch"),
    (["data.train_source=files"], "train_source = 'files'"),
    (["data.generator=other"], "generator = 'other'"),
    (["data.eval_source=held-out"], "held-out\" draws from the on-the-fly generator"),
    (["data.eval_split=", "data.eval_source=split"], "eval_source = \"split\" needs"),
])
def test_bad_config_values_are_one_line_errors(sets, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["data.dir=x", *sets])


@pytest.mark.parametrize("old, sources", [
    ({"data.dir": "d"}, ("shards", "split")),
    ({"data.generator": "procedural"}, ("procedural", "held-out")),
    ({"data.generator": "procedural", "data.dir": "d"}, ("procedural", "split")),
    ({"data.generator": "dataset", "data.dir": "d"}, ("composed", "split")),
    ({"data.generator": "", "data.dir": "d", "data.eval_split": ""}, ("shards", "none")),
    ({"data.generator": "procedural", "data.eval_split": ""}, ("procedural", "none")),
])
def test_the_earlier_data_spelling_reads_as_explicit_sources(old, sources):
    """[data] generator (configs and run folders before train_source, and --generator) and an eval source left
    to "auto" give the sources the loop used to infer from generator, dir and eval_split."""
    c = load_config(None, overrides=old)
    assert (c.data.train_source, c.data.eval_source) == sources
    new = {k: v for k, v in old.items() if k != "data.generator"}
    assert load_config(None, overrides={**new, "data.train_source": sources[0], "data.eval_source": sources[1]}) == c


def test_the_generator_flag_over_a_config_file_sets_the_train_source(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(to_toml(load_config(None, ["data.dir=d"])))
    assert 'train_source = "shards"' in path.read_text() and "generator" not in path.read_text()
    assert load_config(path, overrides={"data.generator": "procedural"}).data.train_source == "procedural"


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nepochs = 1\n")
    with pytest.raises(UserError, match="bad.toml: not valid TOML"):
        load_config(path)


def test_example_configs_load():
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("src/maskdepth/configs").glob("*.toml")):
        load_config(path)


def test_plan_resizes_progressively_and_schedules_span_it():
    c = load_config(None, ["data.dir=x", "train.resize=[[64, 2, 32], [112, 1, 16]]", "train.epochs=4",
                           "schedule.name=step", "schedule.step_epochs=2", "schedule.gamma=0.1"])
    plan = make_plan(c, lambda epoch, size, bs: 160 // bs)
    assert plan.sizes == [64, 64, 112, 112] and plan.batch_sizes == [32, 32, 16, 16]
    assert plan.steps == [5, 5, 10, 10] and plan.total == 30
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_scheduler(c, opt, plan)
    lrs = []
    for _ in range(plan.total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[9] == 1.0 and lrs[10] == pytest.approx(0.1)  # x0.1 after two epochs
    capped = make_plan(load_config(None, ["data.dir=x", "train.steps=12"]), lambda e, s, b: 5)
    assert capped.steps == [5, 5, 2] and capped.total == 12  # train.steps decides the length
    for name in ("cosine", "onecycle", "constant"):
        c = load_config(None, ["data.dir=x", f"schedule.name={name}", "schedule.warmup_steps=3"])
        opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = make_scheduler(c, opt, plan)
        for _ in range(plan.total):  # OneCycleLR raises if stepped past its length
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] <= 1.0


# -- the loop ----------------------------------------------------------------------------------------------

def test_loss_falls_and_the_run_folder_holds_everything(dataset, tmp_path):
    run = tmp_path / "run"
    last = train(config(dataset, **{"train.epochs": 3, "train.epoch_steps": 8, "optim.lr": 3e-3}), run)
    train_logs = [r for r in read_metrics(run) if r["split"] == "train"]
    losses = [r["loss"]["total"] for r in train_logs]
    assert len(losses) == 24
    first, final = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert final < 0.85 * first, (first, final)
    assert all(r["samples_per_s"] > 0 and r["lr"] > 0 for r in train_logs)
    evals = [r for r in read_metrics(run) if r["split"] == "test"]
    assert [r["epoch"] for r in evals] == [1, 2, 3] and evals[-1] == json.loads(json.dumps(last))
    assert evals[-1]["samples"] == 24 and 0 <= evals[-1]["metrics"]["mask_iou"] <= 1
    # the run folder: reusable config, the command, versions, TensorBoard, sample grids, checkpoints
    assert load_config(run / "config.toml") == config(dataset, **{"train.epochs": 3, "train.epoch_steps": 8,
                                                                    "optim.lr": 3e-3})
    info = json.loads((run / "run.json").read_text())
    assert info["versions"]["torch"] == torch.__version__ and info["params"] > 0
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert len(list((run / "samples").glob("*.png"))) == 3
    for name in ("last", "best"):
        model, header = load_model_from_checkpoint(run / f"{name}.safetensors")
        assert header["depth"]["unit"] == "metres" and header["train_size"] == [SIZE, SIZE]
        assert header["model"] == "maskdepth-small" and model.depth_max == header["depth"]["max"]
        assert "mask_iou" in header["metrics"]
    assert read_checkpoint(run / "last.safetensors")[1]["step"] == 24
    assert cli(["plot", str(run)]) == 0 and (run / "curves.png").stat().st_size > 1000


def test_resume_after_a_crash_ends_identical_to_an_uninterrupted_run(dataset, tmp_path):
    """A crash at step 8 (last state saved at step 6, mid-epoch 2) and --resume: same weights, bit for bit.
    Deterministic mode, one loader worker process, augmentation and capture jitter on."""
    overrides = {"train.epochs": 2, "train.epoch_steps": 5, "train.checkpoint_every": 3, "train.deterministic": True,
                 "data.workers": 1, "optim.name": "sgd", "schedule.name": "onecycle", "train.samples": 0}
    whole = tmp_path / "whole"
    train(config(dataset, **overrides), whole)

    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        train(config(dataset, **overrides), broken, on_step=crash_at(8))
    state = torch.load(broken / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 1)
    assert cli(["train", "--resume", str(broken)]) == 0
    a, b = weights(whole), weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [r["step"] for r in read_metrics(broken) if r["split"] == "train"]
    assert logged == list(range(1, 11))  # the crashed steps 7-8 were logged once, by the resumed run


def test_a_crash_between_the_two_writes_of_the_final_checkpoint_resumes_identical(dataset, tmp_path, monkeypatch):
    """The final checkpoint is two files (last.safetensors and state.pt): a crash after the first of them and
    --resume end with the uninterrupted run's file, byte for byte, whichever order they are written in."""
    from maskdepth.train import loop, resume

    overrides = {"train.epochs": 2, "train.epoch_steps": 3, "train.deterministic": True, "optim.name": "sgd",
                 "train.samples": 0}
    whole = tmp_path / "whole"
    train(config(dataset, **overrides), whole)

    class Crash(Exception):
        pass

    final_writes = []

    def crash_on_the_second(step: int) -> None:
        if step == 6:
            final_writes.append(step)
            if len(final_writes) == 2:
                raise Crash

    save_state, save_checkpoint = resume.save_state, loop.save_checkpoint

    def state(run, place, pos, *rest):
        crash_on_the_second(pos.step)
        save_state(run, place, pos, *rest)

    def last(path, model, header):
        if Path(path).name == "last.safetensors":
            crash_on_the_second(header["step"])
        save_checkpoint(path, model, header)

    monkeypatch.setattr(resume, "save_state", state)
    monkeypatch.setattr(loop, "save_checkpoint", last)
    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        train(config(dataset, **overrides), broken)
    monkeypatch.undo()
    assert cli(["train", "--resume", str(broken)]) == 0
    assert (broken / "last.safetensors").read_bytes() == (whole / "last.safetensors").read_bytes()


def test_two_process_ddp_equals_one_process_on_the_same_global_batches(dataset, tmp_path, monkeypatch):
    """torchrun, 2 CPU processes (gloo), 4 samples each, against one process given each step's two rank
    batches as one batch of 8 (the loader's own rank split, asked for in this process).

    Equal up to float rounding because DDP averages the ranks' gradients, every loss term is a mean over
    pixels or images of equal-sized halves (procedural depth is valid everywhere), and BatchNorm statistics
    are frozen (train.freeze_bn): plain BatchNorm would normalise each rank's half with its own statistics, and
    SyncBatchNorm, which the loop uses on GPUs, has no CPU implementation. Evaluation runs under DDP too: each
    rank scores its part of the test split and the metrics are all-reduced, so they must equal one process
    scoring all of it."""
    sets = {"train.epochs": 1, "train.epoch_steps": 4, "train.freeze_bn": True, "train.samples": 0}
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "maskdepth", "train", "--data", str(dataset), "--out", str(ddp)]
    for key, value in {**BASE, **sets}.items():
        cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else str(value).lower()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((ddp / "run.json").read_text())["world_size"] == 2

    from maskdepth.data import loader as loader_mod

    def both_ranks(self, epoch, size, global_batch, skip):
        halves = []
        for rank in (0, 1):
            with monkeypatch.context() as m:
                m.setattr(loader_mod, "_dist", lambda rank=rank: (rank, 2))
                halves.append(loader_mod.make_loader(
                    self.config.data.dir, "train", global_batch // 2, size, train=True, augment=self._augment(),
                    capture=train_data.capture_of(self.config), workers=0, seed=self.config.train.seed, epoch=epoch))
        for b0, b1 in zip(*halves):
            yield {k: torch.cat([b0[k], b1[k]]) for k in b0}

    monkeypatch.setattr(train_data.TrainData, "epoch", both_ranks)
    one = tmp_path / "one"
    train(config(dataset, **sets), one)
    a, b = weights(one), weights(ddp)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
    (m_one,), (m_ddp,) = ([r for r in read_metrics(run) if r["split"] == "test"] for run in (one, ddp))
    assert m_one["samples"] == m_ddp["samples"] == 24
    for name, value in m_one["metrics"].items():
        assert m_ddp["metrics"][name] == pytest.approx(value, abs=1e-3), name
    assert m_ddp["loss"]["total"] == pytest.approx(m_one["loss"]["total"], rel=1e-4)


def _poison(monkeypatch, steps: set[int]):
    """Put a NaN into the image of the batches of the given (1-based) steps."""
    epoch = train_data.TrainData.epoch

    def poisoned(self, e, size, global_batch, skip):
        for i, batch in enumerate(epoch(self, e, size, global_batch, skip), start=skip + 1):
            if i in steps:
                batch["image"][0, 0, 0, 0] = math.nan
            yield batch

    monkeypatch.setattr(train_data.TrainData, "epoch", poisoned)


def test_a_nan_batch_is_skipped_and_reported(dataset, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2})
    run = tmp_path / "run"
    train(config(dataset, **{"train.epochs": 1, "train.epoch_steps": 4, "train.samples": 0}), run)
    assert "step 2: non-finite loss" in capsys.readouterr().err
    skipped = [r for r in read_metrics(run) if r.get("event") == "skipped"]
    assert [r["step"] for r in skipped] == [2] and skipped[0]["loss"] == "nan"
    state = weights(run)  # weights and BatchNorm statistics stayed finite
    assert all(torch.isfinite(v).all() for v in state.values())
    assert read_checkpoint(run / "last.safetensors")[1]["step"] == 4


def test_nans_in_a_row_stop_the_run_with_a_clear_message(dataset, tmp_path, monkeypatch):
    _poison(monkeypatch, {2, 3, 4})
    with pytest.raises(UserError, match="training stopped at step 4: .* NaN/inf for 3 steps in a row"):
        train(config(dataset, **{"train.epochs": 1, "train.epoch_steps": 6, "train.max_bad_steps": 3,
                                 "train.samples": 0}), tmp_path / "run")


def test_generator_with_progressive_resizing_and_held_out_evaluation(tmp_path):
    run = tmp_path / "gen"
    c = load_config(None, overrides={**BASE, "data.generator": "procedural", "data.gen_backgrounds": 2,
                                     "data.gen_cutouts": 3, "data.gen_eval_batches": 1, "train.epochs": 2,
                                     "train.epoch_steps": 2, "train.resize": [[24, 1, 4], [SIZE, 1]]})
    last = train(c, run)
    sizes = [r["size"] for r in read_metrics(run) if r["split"] == "train"]
    assert sizes == [24, 24, SIZE, SIZE]
    assert last["split"] == "held-out" and last["samples"] == 8
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["data"]["ranks"][0]["step"] == 4  # the generator's position, for --resume


def test_a_run_folder_in_the_earlier_data_spelling_resumes_identically(tmp_path):
    """A run whose config.toml says [data] generator = "procedural" (as runs begun before train_source do)
    continues with --resume to the same weights as a run never stopped."""
    overrides = {**BASE, "data.train_source": "procedural", "data.gen_backgrounds": 2, "data.gen_cutouts": 3,
                 "data.gen_eval_batches": 1, "train.epochs": 2, "train.epoch_steps": 2, "train.deterministic": True,
                 "train.samples": 0}
    whole = tmp_path / "whole"
    train(load_config(None, overrides=overrides), whole)

    old = tmp_path / "old"
    with pytest.raises(Crash):
        train(load_config(None, overrides=overrides), old, on_step=crash_at(3))
    text = (old / "config.toml").read_text()
    text = text.replace('train_source = "procedural"\n', 'generator = "procedural"\n')
    text = text.replace('eval_source = "held-out"\n', "")
    assert "train_source" not in text and "eval_source" not in text
    (old / "config.toml").write_text(text)
    assert torch.load(old / "state.pt", weights_only=True)["step"] == 2
    assert cli(["train", "--resume", str(old)]) == 0
    a, b = weights(whole), weights(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_budget_ends_the_run_with_a_checkpoint_mid_epoch(dataset, tmp_path):
    run = tmp_path / "run"
    train(config(dataset, **{"train.epochs": 2, "train.epoch_steps": 4, "train.time_budget_s": 1e-9,
                             "data.eval_split": "", "train.samples": 0}), run)
    state = torch.load(run / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 0, 1)  # one step always exceeds it
    assert read_checkpoint(run / "last.safetensors")[1]["step"] == 1


def test_fine_tuning_starts_from_a_checkpoint(dataset, tmp_path, capsys):
    source = tmp_path / "source"
    train(config(dataset, **{"train.steps": 1, "data.eval_split": "", "train.samples": 0}), source)
    tuned = tmp_path / "tuned"
    # model.name is ignored: the checkpoint says what network it holds
    train(config(dataset, **{"train.steps": 1, "data.eval_split": "", "train.samples": 0, "optim.lr": 1e-9,
                             "model.name": "seed-updown", "model.init": str(source / "last.safetensors")}),
          tuned)
    a, b = weights(source), weights(tuned)
    learned = [k for k in a if "running_" not in k and "num_batches" not in k]  # BatchNorm statistics move
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in learned) < 1e-6
    assert json.loads((tuned / "run.json").read_text())["init"] == str(source / "last.safetensors")
    assert load_config(tuned / "config.toml").model.name == "maskdepth-small"
    with pytest.raises(UserError, match="not found"):
        train(config(dataset, **{"model.init": str(tmp_path / "missing.safetensors")}), tmp_path / "x")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_bf16_channels_last_and_resume(tmp_path):
    """On CUDA the resumed run matches closely, not bit for bit: bilinear upsampling's backward adds with
    atomics there, whose order varies."""
    overrides = {**BASE, "train.device": "cuda", "data.generator": "procedural", "data.gen_backgrounds": 2,
                 "data.gen_cutouts": 3, "data.gen_eval_batches": 1, "train.epochs": 2, "train.epoch_steps": 3,
                 "train.checkpoint_every": 2, "train.deterministic": True}
    whole = tmp_path / "whole"
    last = train(load_config(None, overrides=overrides), whole)
    assert math.isfinite(last["loss"]["total"])

    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        train(load_config(None, overrides=overrides), broken, on_step=crash_at(5))
    train(open_existing(broken), broken, resume=True)
    a, b = weights(whole), weights(broken)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


# -- the command line ---------------------------------------------------------------------------------------

def test_cli_refuses_to_overwrite(dataset, tmp_path, capsys):
    args = ["train", "--data", str(dataset), "--model", "maskdepth-small", "--size", "24", "--batch-size", "8",
            "--workers", "0", "--steps", "1", "--set", "train.samples=0", "--set", "data.eval_split="]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli([*args, "--out", str(mine)]) == 2
    assert "not empty and is not a maskdepth run" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    run = tmp_path / "run"
    assert cli([*args, "--out", str(run)]) == 0
    assert cli([*args, "--out", str(run)]) == 2
    assert f"continue it with --resume {run}" in capsys.readouterr().err
    assert cli(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "give no other options" in capsys.readouterr().err
    assert cli([*args, "--out", str(run), "--force"]) == 0
    assert cli(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a maskdepth training run" in capsys.readouterr().err
    assert open_existing(run).data.size == 24


def test_generated_batches_are_augmented_on_the_cpu_and_resume_exactly():
    from maskdepth.train.dist import DeviceRank

    def batches(augment: bool, start: int = 0, n: int = 3):
        c = load_config(None, overrides={**BASE, "data.generator": "procedural", "data.gen_backgrounds": 2,
                                         "data.gen_cutouts": 3, "data.augment": augment})
        data = train_data.TrainData(c, DeviceRank(torch.device("cpu"), 0, 1, 0))
        data.load_state_dict({"seed": data.generator.seed, "step": start})
        stream = data.epoch(0, 24, 4, 0)
        return [next(stream) for _ in range(n)]

    plain, augmented, resumed = batches(False), batches(True), batches(True, start=1, n=2)
    assert augmented[0]["image"].shape == (4, 3, 24, 24)
    assert not torch.equal(plain[0]["image"], augmented[0]["image"])  # crops and light changes happened
    assert plain[0]["mask"].sum() > 0
    for a, b in zip(augmented[1:], resumed):  # from the generator's position alone, the same crops again
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_compose_section_reaches_the_generator_and_is_checked():
    from maskdepth.train.dist import DeviceRank

    gen = {**BASE, "data.generator": "procedural", "data.gen_backgrounds": 2, "data.gen_cutouts": 3}
    c = load_config(None, overrides={**gen, "compose.camo_prob": 0.0, "compose.camo_amount": [0.2, 0.4]})
    data = train_data.TrainData(c, DeviceRank(torch.device("cpu"), 0, 1, 0))
    assert data.generator.compose.camo_prob == 0.0 and list(data.generator.compose.camo_amount) == [0.2, 0.4]
    assert data.generator.compose.cast_prob == ComposeConfig().cast_prob  # the rest keep their defaults
    with pytest.raises(UserError, match=r"\[compose\] cast_prob = 1.5: give a probability from 0 to 1"):
        load_config(None, overrides={**gen, "compose.cast_prob": 1.5})
    with pytest.raises(UserError, match="unknown key \\[compose\\] shadows"):
        load_config(None, overrides={**gen, "compose.shadows": 1})
    with pytest.raises(UserError, match="remove \\[compose\\] or use the generator"):
        load_config(None, overrides={**BASE, "data.dir": "data", "compose.camo_prob": 0.0})


def test_matching_init_grows_another_design_from_a_checkpoint(dataset, tmp_path, capsys):
    source = tmp_path / "source"
    train(config(dataset, **{"train.steps": 1, "data.eval_split": "", "train.samples": 0,
                             "model.name": "maskdepth", "model.kwargs": {"width": 8, "depths": [1, 1]}}), source)
    grown = tmp_path / "grown"
    train(config(dataset, **{"train.steps": 1, "data.eval_split": "", "train.samples": 0,
                             "model.name": "maskdepth-siamese", "model.kwargs": {"width": 8, "depths": [1, 1]},
                             "model.init": str(source / "last.safetensors"), "model.init_mode": "matching"}), grown)
    assert "tensors copied, 1 widened" in capsys.readouterr().err
    assert load_config(grown / "config.toml").model.name == "maskdepth-siamese"
    assert read_checkpoint(grown / "last.safetensors")[1]["model"] == "maskdepth-siamese"
    with pytest.raises(UserError, match="init_mode"):
        config(dataset, **{"model.init_mode": "loose"})


def test_a_run_out_of_time_goes_on_with_more_seconds(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(dataset, **{"train.epochs": 2, "train.epoch_steps": 4, "train.time_budget_s": 1e-9,
                             "data.eval_split": "", "train.samples": 0}), run)
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 1
    assert cli(["train", "--resume", str(run), "--more-seconds", "600"]) == 0
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 8  # the whole plan, in a second sitting
    assert cli(["train", "--resume", str(run), "--more-seconds", "-1"]) == 2
    assert cli(["train", "--out", str(tmp_path / "x"), "--more-seconds", "5"]) == 2
    assert "--more-seconds goes with --resume" in capsys.readouterr().err
