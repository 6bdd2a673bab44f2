"""The training loop: one code path for the CPU, one GPU and many GPUs (torchrun + DistributedDataParallel).

Order of one step: forward (bf16 autocast on CUDA) -> loss -> backward -> gradient norm (clipped) -> if the loss
and the norm are finite on every rank, optimizer step, else the step is skipped, BatchNorm statistics restored
and the skip reported -> scheduler step. Checkpoints and the resumable state are written between steps, so a
run killed at any moment continues from its last state exactly (same weights, optimizer, schedule, RNG and
position in the data).

The loop's parts live beside it: plan.py (epochs, steps, learning rate), model.py (network, optimizer),
data.py (batches), resume.py (state.pt), rundir.py (the run folder), dist.py (ranks).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from maskdepth.checkpoint import save_checkpoint
from maskdepth.errors import UserError
from maskdepth.evaluate import EvalResult, cpu_sample, evaluate_batches, forward_batch, sample_grid
from maskdepth.losses import CombinedLoss
from maskdepth.metrics import METRIC_NAMES
from maskdepth.progress import Progress
from maskdepth.train import dist as distmod
from maskdepth.train import resume as resumemod
from maskdepth.train import rundir
from maskdepth.train.config import Config
from maskdepth.train.data import Batch, TrainData
from maskdepth.train.dist import DeviceRank, all_mean, all_true
from maskdepth.train.model import BufferGuard, build_model, make_optimizer, set_train_mode
from maskdepth.train.plan import make_plan, make_scheduler
from maskdepth.train.resume import LoopPosition
from maskdepth.viz import save_png


def cpu_threads_beside(workers: int) -> int:
    """Compute threads for training on the CPU next to `workers` loader processes: the cores they leave (at
    most torch's current count). Idle compute threads spin-wait, so with workers on the same cores a step can
    take several times as long."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - workers))


def train(config: Config, out: str | Path, *, resume: bool = False, force: bool = False,
          argv: list[str] | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or with `resume`, continue) training into run folder `out`. Under torchrun every rank calls this.

    `on_step(step)` is called after each step once its checkpoint (if due) is written. Returns the last
    evaluation record (or {} without evaluation). `config` is left as it was given."""
    place = distmod.setup(config.train.device)
    # process-wide settings the run changes, given back to the caller afterwards
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    threads = torch.get_num_threads()
    try:
        if place.device.type == "cpu" and config.data.train_source == "shards":
            torch.set_num_threads(cpu_threads_beside(config.data.workers))
        last_eval = _Trainer(config, Path(out), place, resume, force, argv or rundir.command_line(), on_step).run()
        distmod.finish(place)
        return last_eval
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.set_num_threads(threads)
        distmod.teardown()


class _Trainer:
    def __init__(self, config: Config, out: Path, place: DeviceRank, resume: bool, force: bool, argv: list[str],
                 on_step: Callable[[int], None] | None):
        self.config, self.out, self.place, self.on_step = config, out, place, on_step
        self.cuda = place.device.type == "cuda"
        self._setup_runtime()
        torch.manual_seed(config.train.seed)
        self.data = TrainData(config, place)
        self.plan = make_plan(config, self.data.steps_per_epoch)
        self._setup_model(resume)
        self.loss_fn = CombinedLoss(config.loss, self.data.depth_max)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.scheduler = make_scheduler(config, self.optimizer, self.plan)
        self.guard = BufferGuard(self.model)
        self.pos = LoopPosition()
        self._setup_run_folder(resume, force, argv)
        self.tb = SummaryWriter(str(out / "tb"), purge_step=self.pos.step if resume else None) \
            if place.main else None

    # -- setup ----------------------------------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        """Process-wide torch settings (`train` gives the deterministic flag back afterwards)."""
        t = self.config.train
        if t.deterministic:
            # bit-exact on the CPU; on CUDA some kernels (bilinear upsampling's backward) have no
            # deterministic version, so there they only warn
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.cuda)
        if self.cuda:
            torch.backends.cudnn.benchmark = not t.deterministic
            torch.set_float32_matmul_precision("high")  # TF32 where autocast leaves float32 matmuls

    def _setup_model(self, resume: bool) -> None:
        """`self.model`, the bare module (checkpoints, evaluation), and `self.net`, what the step calls (DDP
        and / or compiled), on this rank's device. On `resume` the weights come from state.pt afterwards, so how
        model.init was copied goes unsaid."""
        t = self.config.train
        model, self.init_from = build_model(self.config, self.data.depth_max, self.data.depth_unit, quiet=resume)
        if self.config.model.init:  # the run folder's config names the network the checkpoint holds
            self.config = replace(self.config, model=replace(self.config.model, name=model.model_name))
        self.model_name = model.model_name
        model.to(self.place.device)
        if self.cuda and t.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.place.distributed and self.cuda and t.sync_bn and not t.freeze_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.net: nn.Module = model
        if self.place.distributed:
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=[self.place.device.index] if self.cuda
                                                           else None)
        if t.compile:
            self.net = torch.compile(self.net)
        self.amp = self.cuda and t.amp

    def _setup_run_folder(self, resume: bool, force: bool, argv: list[str]) -> None:
        """A new run folder, or with `resume` the run's state put back and what came after it dropped."""
        state = resumemod.load_state(self.out) if resume else None
        if state is None:
            rundir.check_new(self.out, force, self._inputs())  # on every rank, before any rank writes
            self._barrier()
        if self.place.main:
            if state is not None:
                rundir.clean_for_resume(self.out, state["step"])
            else:
                rundir.create(self.out, self.config, argv, force, {
                    "device": str(self.place.device), "world_size": self.place.world_size, "init": self.init_from,
                    "data": self.data.describe, "model": self.model_name,
                    "params": sum(p.numel() for p in self.model.parameters()),
                }, self._inputs())
        self._barrier()
        if state is None:
            return
        self.pos = resumemod.restore_state(state, self.out, self.place, self.model, self.optimizer, self.scheduler,
                                     self.data)
        self.guard.keep()
        if self.place.main:
            print(f"resuming {self.out} at step {self.pos.step} (epoch {self.pos.epoch + 1}, batch "
                  f"{self.pos.batch_in_epoch})", file=sys.stderr)

    def _inputs(self) -> list[str | None]:
        """What the run reads, which --force must never remove: the dataset and the initial weights."""
        init = self.config.model.init
        return [self.config.data.dir or None, init if init not in ("", "default") else None]

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan, pos = self.plan, self.pos
        try:
            if self.place.main:
                print(f"training {self.model_name} on {self.data.describe} ({self.place.device}, "
                      f"{self.place.world_size} process(es)): {len(plan.steps)} epoch(s), {plan.total} steps",
                      file=sys.stderr)
            while pos.epoch < len(plan.steps):
                out_of_time = self._run_epoch()
                if pos.batch_in_epoch == plan.steps[pos.epoch]:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                self._evaluate(grid=True)
                self._checkpoint()
                if self.on_step is not None:
                    self.on_step(pos.step)
                if out_of_time:
                    break
        finally:
            if self.tb is not None:
                self.tb.close()
        return self.pos.last_eval

    def _run_epoch(self) -> bool:
        """The rest of the current epoch, or less when train.time_budget_s runs out (then True)."""
        t, pos = self.config.train, self.pos
        size, gbs, n = self.plan.sizes[pos.epoch], self.plan.batch_sizes[pos.epoch], self.plan.steps[pos.epoch]
        with torch.random.fork_rng(devices=[]):  # making the loader draws no seed from our RNG
            batches = self.data.epoch(pos.epoch, size, gbs, pos.batch_in_epoch)
        logged = _Window()
        out_of_time = False
        with Progress(n * gbs, f"epoch {pos.epoch + 1}/{len(self.plan.steps)}", unit="img",
                      enabled=self.place.main) as progress:
            progress.update(pos.batch_in_epoch * gbs)
            while pos.batch_in_epoch < n:
                t0 = time.perf_counter()
                terms = self._train_step(self._next_batch(batches, n))
                pos.step += 1
                pos.batch_in_epoch += 1
                seconds = time.perf_counter() - t0
                pos.train_time += seconds
                logged.add(terms, gbs, seconds)
                progress.update(gbs, loss=terms.get("total", math.nan), lr=self._lr())
                if pos.step % t.log_every == 0:
                    self._log_train(logged)
                out_of_time = t.time_budget_s > 0 and not all_true(pos.train_time < t.time_budget_s, self.place)
                if out_of_time or pos.batch_in_epoch == n:  # the caller evaluates and checkpoints
                    break
                self._between_steps()
        if logged.count:
            self._log_train(logged)
        return out_of_time

    def _next_batch(self, batches: Iterator[Batch], planned: int) -> Batch:
        batch = next(batches, None)
        if batch is None:
            raise UserError(f"{self.config.data.dir}: the loader gave {self.pos.batch_in_epoch} batches in "
                            f"epoch {self.pos.epoch + 1}, fewer than the {planned} planned; the dataset changed "
                            "under the run: start it again")
        return batch

    def _between_steps(self) -> None:
        """What is due inside an epoch after a step: evaluation, checkpoint, the caller's hook."""
        t, step = self.config.train, self.pos.step
        if t.eval_every and step % t.eval_every == 0:
            self._evaluate()
        if t.checkpoint_every and step % t.checkpoint_every == 0:
            self._checkpoint()
        if self.on_step is not None:
            self.on_step(step)

    def _train_step(self, batch: Batch) -> dict[str, float]:
        set_train_mode(self.net, self.config.train.freeze_bn)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.place.device.type, dtype=torch.bfloat16, enabled=self.amp):
            mask_logits, depth = self.net(batch["bg"], batch["image"])
        loss, terms = self.loss_fn(mask_logits, depth, batch)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_grad_norm or math.inf)
        # one device -> host copy per step: the finiteness check and the logged terms together
        loss_v, norm_v, *values = torch.stack([loss.detach(), norm, *terms.values()]).float().tolist()
        if all_true(math.isfinite(loss_v) and math.isfinite(norm_v), self.place):
            self.optimizer.step()
            self.guard.keep()
            self.pos.bad_in_row = 0
        else:
            self._skip(loss_v, norm_v)
        self.scheduler.step()
        return dict(zip(terms, values))

    def _skip(self, loss: float, norm: float) -> None:
        """A non-finite loss or gradient: no update, BatchNorm statistics back to the last good step."""
        self.guard.restore()
        self.optimizer.zero_grad(set_to_none=True)
        pos, t = self.pos, self.config.train
        pos.bad_in_row += 1
        if self.place.main:
            print(f"warning: step {pos.step + 1}: non-finite loss ({loss:.4g}) or gradient norm "
                  f"({norm:.4g}); step skipped ({pos.bad_in_row} in a row, stop at {t.max_bad_steps})",
                  file=sys.stderr)
            rundir.append_metrics(self.out, {"split": "train", "event": "skipped", "step": pos.step + 1,
                                             "epoch": pos.epoch + 1, "loss": loss, "grad_norm": norm})
        if pos.bad_in_row >= t.max_bad_steps:
            raise UserError(f"training stopped at step {pos.step + 1}: the loss or its gradient was NaN/inf "
                            f"for {pos.bad_in_row} steps in a row; lower optim.lr, set optim.clip_grad_norm, or "
                            "check the data")

    # -- logging, evaluation, checkpoints -------------------------------------------------------------------
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log_train(self, window: _Window) -> None:
        losses = all_mean(window.means(), self.place)
        rate = window.samples / max(window.seconds, 1e-9)
        if self.place.main:
            step = self.pos.step
            record = {"split": "train", "step": step, "epoch": self.pos.epoch + 1, "loss": losses,
                      "lr": self._lr(), "samples_per_s": rate, "size": self.plan.sizes[self.pos.epoch]}
            rundir.append_metrics(self.out, record)
            for k, v in losses.items():
                self.tb.add_scalar(f"train/loss_{k}", v, step)
            self.tb.add_scalar("train/lr", self._lr(), step)
            self.tb.add_scalar("train/samples_per_s", rate, step)
        window.reset()

    def _evaluate(self, grid: bool = False) -> None:
        if not self.data.has_eval():
            return
        if self.place.distributed:  # every rank evaluates rank 0's weights and statistics
            for b in self.model.buffers():
                dist.broadcast(b, 0)
        first: list[Batch] = []

        def keep_first(batches):
            for batch in batches:
                if not first:
                    first.append(batch)
                yield batch

        with torch.random.fork_rng(devices=[]):  # an evaluation draws nothing from the training RNG
            batches = self.data.eval_batches(self.plan.batch_sizes[-1])
            result = evaluate_batches(self.model, keep_first(batches), self.data.depth_max,
                                      aligned=self.data.depth_unit == "relative", loss_fn=self.loss_fn,
                                      autocast=self.amp)
        pos = self.pos
        epoch = pos.epoch + (1 if pos.batch_in_epoch else 0)  # 1-based: the epoch just run
        split = self.config.data.eval_split if self.config.data.eval_source == "split" else "held-out"
        record = {"split": split, "step": pos.step, "epoch": epoch, "loss": result.losses,
                  "metrics": result.metrics, "samples": result.samples}
        self.pos.last_eval = record
        improved = self._update_best(result)
        if not self.place.main:
            return
        rundir.append_metrics(self.out, record)
        for k, v in result.losses.items():
            self.tb.add_scalar(f"test/loss_{k}", v, pos.step)
        for k, v in result.metrics.items():
            self.tb.add_scalar(f"test/{k}", v, pos.step)
        if grid and first and self.config.train.samples:
            self._sample_grid(first[0], epoch)
        if improved:
            save_checkpoint(self.out / rundir.BEST, self.model, self._header(record))

    def _update_best(self, result: EvalResult) -> bool:
        name = self.config.train.best_metric
        if name == "loss":
            value, higher = result.losses.get("total", math.nan), False
        else:
            value, higher = result.metrics.get(name, math.nan), METRIC_NAMES[name][1]
        if math.isnan(value):
            return False
        best = self.pos.best
        better = best is None or (value > best if higher else value < best)
        if better:
            self.pos.best = value
        return better

    def _sample_grid(self, batch: Batch, epoch: int) -> None:
        k = self.config.train.samples
        batch = {key: v[:k] for key, v in batch.items()}
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.place.device.type, dtype=torch.bfloat16, enabled=self.amp):
            mask_logits, depth = forward_batch(self.model, batch["bg"], batch["image"])
        rows = [cpu_sample(batch, mask_logits, depth, i) for i in range(batch["image"].shape[0])]
        grid = sample_grid(rows, self.data.depth_max)
        save_png(self.out / "samples" / f"epoch-{epoch:04d}-step-{self.pos.step:07d}.png", grid)
        self.tb.add_image("samples", grid, self.pos.step, dataformats="HWC")

    def _header(self, eval_record: dict[str, Any] | None) -> dict[str, Any]:
        size = self.plan.sizes[min(self.pos.epoch, len(self.plan.sizes) - 1)]
        return {"depth": {"unit": self.data.depth_unit, "max": self.data.depth_max, "scale": self.data.depth_scale},
                "train_size": [size, size], "predict_native": self.config.train.predict_native,
                "dataset": self.data.describe, "step": self.pos.step, "epoch": self.pos.epoch, "init": self.init_from,
                "metrics": (eval_record or {}).get("metrics", {})}

    def _checkpoint(self) -> None:
        """last.safetensors and the resumable state, both at the current step. The state goes last: a state at
        step N promises a whole last.safetensors of step N, so a kill between the two writes resumes from the
        previous state and writes both again (with the state first, a kill in the run's final checkpoint left a
        finished state beside the previous step's weights)."""
        if self.place.main:
            save_checkpoint(self.out / rundir.LAST, self.model, self._header(self.pos.last_eval))
        resumemod.save_state(self.out, self.place, self.pos, self.model, self.optimizer, self.scheduler, self.data)

    def _barrier(self) -> None:
        if self.place.distributed:
            dist.barrier()


class _Window:
    """Loss terms, samples and training seconds (data wait included, evaluation not) since the last log."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.seconds = 0.0

    def add(self, terms: dict[str, float], samples: int, seconds: float) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.samples += samples
        self.seconds += seconds

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

