"""The training loop: one code path for the CPU, one GPU and many GPUs (torchrun + DistributedDataParallel).

Order of one step: forward (bf16 autocast on CUDA) -> loss -> backward -> gradient norm (clipped) -> if the loss
and the norm are finite on every rank, optimizer step, else the step is skipped, BatchNorm statistics restored
and the skip reported -> scheduler step. Checkpoints and the resumable state are written between steps, so a
run killed at any moment continues from its last state exactly (same weights, optimizer, schedule, RNG and
position in the data).
"""

from __future__ import annotations

import bisect
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskdepth.errors import UserError
from maskdepth.train import rundir
from maskdepth.train.config import Config
from maskdepth.train.dist import DeviceRank, all_mean, all_true


@dataclass(frozen=True)
class Plan:
    """Per epoch: side, global batch size and number of steps; the step each epoch starts at; total steps."""

    sizes: list[int]
    batch_sizes: list[int]
    steps: list[int]
    starts: list[int]
    total: int

    def epoch_of(self, step: int) -> int:
        return bisect.bisect_right(self.starts, step) - 1


def make_plan(config: Config, steps_per_epoch: Callable[[int, int, int], int]) -> Plan:
    """Per-epoch side, batch size and step count from train.resize stages (the last one repeats) and
    `steps_per_epoch(epoch, size, batch_size)`. Length: train.steps when > 0, else train.epochs."""
    t = config.train
    stages = [(s[0], s[1], s[2] if len(s) == 3 else t.batch_size) for s in t.resize] or \
             [(config.data.size, t.epochs, t.batch_size)]
    per_epoch = [(size, bs) for size, epochs, bs in stages for _ in range(epochs)]
    sizes, batch_sizes, steps, starts = [], [], [], []
    total = 0
    while (total < t.steps) if t.steps > 0 else (len(steps) < t.epochs):
        size, bs = per_epoch[min(len(steps), len(per_epoch) - 1)]
        n = steps_per_epoch(len(steps), size, bs)
        if t.steps > 0:
            n = min(n, t.steps - total)
        sizes.append(size)
        batch_sizes.append(bs)
        starts.append(total)
        steps.append(n)
        total += n
    return Plan(sizes, batch_sizes, steps, starts, total)


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer, plan: Plan):
    """Stepped once per training step. onecycle is torch's OneCycleLR; the others are one LambdaLR factor."""
    s = config.schedule
    if s.name == "onecycle":
        # one more than the steps: the step after the last one would otherwise be past its end
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.optim.lr, total_steps=plan.total + 1,
                                                   pct_start=s.pct_start)

    def factor(step: int) -> float:
        if s.name == "step":
            return s.gamma ** (plan.epoch_of(step) // s.step_epochs)
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.name == "constant":
            return 1.0
        progress = min(1.0, (step - s.warmup_steps) / max(1, plan.total - s.warmup_steps))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BufferGuard:
    """Keeps a copy of the model's floating-point buffers (BatchNorm statistics) from the last good step, so a
    skipped step (non-finite loss) leaves no NaN behind in them."""

    def __init__(self, model: nn.Module):
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.buffers]

    def keep(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


def build_model(config: Config, depth_max: float, data_unit: str = "metres") -> tuple[nn.Module, str]:
    """The model to train: fresh from the registry, or (model.init) weights from a checkpoint or the packaged
    default. A fresh model takes depth_max from the data; an initialised one keeps its own when the depth unit is
    the same. Returns (model, what it was initialised from)."""
    from maskdepth.models import create_model

    init = config.model.init
    if not init:
        return create_model(config.model.name, **{**config.model.kwargs, "depth_max": depth_max}), "random"
    from maskdepth.checkpoint import build_for_state, read_checkpoint

    path = _default_weights() if init == "default" else Path(init)
    state, header = read_checkpoint(path)
    kwargs = {**header.get("model_kwargs", {}), **config.model.kwargs}
    same_unit = (header.get("depth") or {}).get("unit") == data_unit
    if not same_unit or "depth_max" not in kwargs:
        kwargs["depth_max"] = depth_max  # another unit: the depth head starts over on the data's scale
    elif kwargs["depth_max"] < depth_max:
        # the checkpoint's depth head is kept on its own scale (rescaling it would undo what it learned)
        print(f"note: {path} predicts depth up to {kwargs['depth_max']:g} {data_unit}, the data reaches "
              f"{depth_max:g}; deeper pixels are learned as that bound", file=sys.stderr)
    if config.model.init_mode == "matching":
        from maskdepth.checkpoint import load_matching

        kwargs = {k: v for k, v in kwargs.items() if k in ("depth_max", *config.model.kwargs)}
        model = create_model(config.model.name, **kwargs)
        counts = load_matching(model, state)
        print(f"note: {config.model.name} from {path} ({header['model']}): {counts['copied']} tensors copied, "
              f"{counts['widened']} widened, {counts['fresh']} fresh", file=sys.stderr)
        return model, str(path)
    model = build_for_state(path, header["model"], kwargs, state, hint="check the [model] kwargs given")
    return model, str(path)


def _default_weights() -> Path:
    from importlib.resources import files

    from maskdepth.predict import DEFAULT_WEIGHTS

    path = Path(str(files("maskdepth").joinpath(DEFAULT_WEIGHTS)))
    if not path.is_file():
        raise UserError(f"maskdepth/{DEFAULT_WEIGHTS}: no default weights in this installation; give --init a "
                        "checkpoint path instead")
    return path


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


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
    evaluation record (or {} without evaluation)."""
    from maskdepth.train import dist as distmod

    place = distmod.setup(config.train.device)
    # process-wide settings the run changes, given back to the caller afterwards
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    threads = torch.get_num_threads()
    try:
        if place.device.type == "cpu" and not config.data.generator:
            torch.set_num_threads(cpu_threads_beside(config.data.workers))
        return _Trainer(config, Path(out), place, resume, force, argv or rundir.command_line(), on_step).run()
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.set_num_threads(threads)
        distmod.teardown()


class _Trainer:
    def __init__(self, config: Config, out: Path, place: DeviceRank, resume: bool, force: bool, argv: list[str],
                 on_step: Callable[[int], None] | None):
        from maskdepth.losses import CombinedLoss
        from maskdepth.train.data import TrainData

        self.config, self.out, self.place, self.on_step = config, out, place, on_step
        t = config.train
        cuda = place.device.type == "cuda"
        if t.deterministic:
            # bit-exact on the CPU; on CUDA some kernels (bilinear upsampling's backward) have no
            # deterministic version, so there they only warn
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=cuda)
        if cuda:
            torch.backends.cudnn.benchmark = not t.deterministic
            torch.set_float32_matmul_precision("high")  # TF32 where autocast leaves float32 matmuls
        torch.manual_seed(t.seed)
        self.data = TrainData(config, place)
        self.plan = make_plan(config, self.data.steps_per_epoch)
        model, self.init_from = build_model(config, self.data.depth_max, self.data.depth_unit)
        if config.model.init:
            config.model.name = model.model_name
        self.model_name = model.model_name
        model.to(place.device)
        if cuda and t.channels_last:
            model.to(memory_format=torch.channels_last)
        if place.distributed and cuda and t.sync_bn and not t.freeze_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the bare module: checkpoints, evaluation
        self.net: nn.Module = model  # what the step calls: DDP and / or compiled
        if place.distributed:
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=[place.device.index] if cuda else None)
        if t.compile:
            self.net = torch.compile(self.net)
        self.amp = cuda and t.amp
        self.loss_fn = CombinedLoss(config.loss, self.data.depth_max)
        self.optimizer = make_optimizer(config, model.parameters())
        self.scheduler = make_scheduler(config, self.optimizer, self.plan)
        self.guard = BufferGuard(model)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: float | None = None
        self.bad_in_row = 0
        self.train_time = 0.0
        self.last_eval: dict[str, Any] = {}
        state = rundir.load_state(out) if resume else None
        if state is None:
            rundir.check_new(out, force, self._inputs())  # on every rank, before any rank writes
            self._barrier()
        if place.main:
            if state is not None:
                rundir.clean_for_resume(out, state["step"])
            else:
                rundir.create(out, config, argv, force, {
                    "device": str(place.device), "world_size": place.world_size, "init": self.init_from,
                    "data": self.data.describe, "model": self.model_name,
                    "params": sum(p.numel() for p in model.parameters()),
                }, self._inputs())
        self._barrier()
        if state is not None:
            self._load_state(state)
        self.tb = None
        if place.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=self.step if resume else None)

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan = self.plan
        try:
            if self.place.main:
                print(f"training {self.model_name} on {self.data.describe} ({self.place.device}, "
                      f"{self.place.world_size} process(es)): {len(plan.steps)} epoch(s), {plan.total} steps",
                      file=sys.stderr)
            while self.epoch < len(plan.steps):
                out_of_time = self._run_epoch()
                if self.batch_in_epoch == plan.steps[self.epoch]:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self._evaluate(grid=True)
                self._checkpoint()
                if self.on_step is not None:
                    self.on_step(self.step)
                if out_of_time:
                    break
        finally:
            if self.tb is not None:
                self.tb.close()
        return self.last_eval

    def _run_epoch(self) -> bool:
        """The rest of the current epoch, or less when train.time_budget_s runs out (then True)."""
        from maskdepth.progress import Progress

        t = self.config.train
        size, gbs, n = self.plan.sizes[self.epoch], self.plan.batch_sizes[self.epoch], self.plan.steps[self.epoch]
        with torch.random.fork_rng(devices=[]):  # making the loader draws no seed from our RNG
            batches = self.data.epoch(self.epoch, size, gbs, self.batch_in_epoch)
        logged = _Window()
        out_of_time = False
        with Progress(n * gbs, f"epoch {self.epoch + 1}/{len(self.plan.steps)}", unit="img",
                      enabled=self.place.main) as progress:
            progress.update(self.batch_in_epoch * gbs)
            while self.batch_in_epoch < n:
                t0 = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    raise UserError(f"{self.config.data.dir}: the loader gave {self.batch_in_epoch} batches in "
                                    f"epoch {self.epoch + 1}, fewer than the {n} planned; the dataset changed "
                                    "under the run: start it again")
                terms = self._train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                seconds = time.perf_counter() - t0
                self.train_time += seconds
                logged.add(terms, gbs, seconds)
                progress.update(gbs, loss=terms.get("total", math.nan), lr=self._lr())
                if self.step % t.log_every == 0:
                    self._log_train(logged)
                out_of_time = t.time_budget_s > 0 and not all_true(self.train_time < t.time_budget_s, self.place)
                if out_of_time or self.batch_in_epoch == n:  # the caller evaluates and checkpoints
                    break
                if t.eval_every and self.step % t.eval_every == 0:
                    self._evaluate()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self._checkpoint()
                if self.on_step is not None:
                    self.on_step(self.step)
        if logged.count:
            self._log_train(logged)
        return out_of_time

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        t = self.config.train
        _set_train_mode(self.net, t.freeze_bn)
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
            self.bad_in_row = 0
        else:
            self._skip(loss_v, norm_v)
        self.scheduler.step()
        return dict(zip(terms, values))

    def _skip(self, loss: float, norm: float) -> None:
        """A non-finite loss or gradient: no update, BatchNorm statistics back to the last good step."""
        self.guard.restore()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        t = self.config.train
        if self.place.main:
            print(f"warning: step {self.step + 1}: non-finite loss ({loss:.4g}) or gradient norm "
                  f"({norm:.4g}); step skipped ({self.bad_in_row} in a row, stop at {t.max_bad_steps})",
                  file=sys.stderr)
            rundir.append_metrics(self.out, {"split": "train", "event": "skipped", "step": self.step + 1,
                                             "epoch": self.epoch + 1, "loss": loss, "grad_norm": norm})
        if self.bad_in_row >= t.max_bad_steps:
            raise UserError(f"training stopped at step {self.step + 1}: the loss or its gradient was NaN/inf "
                            f"for {self.bad_in_row} steps in a row; lower optim.lr, set optim.clip_grad_norm, or "
                            "check the data")

    # -- logging, evaluation, checkpoints -------------------------------------------------------------------
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log_train(self, window: _Window) -> None:
        losses = all_mean(window.means(), self.place)
        rate = window.samples / max(window.seconds, 1e-9)
        if self.place.main:
            record = {"split": "train", "step": self.step, "epoch": self.epoch + 1, "loss": losses,
                      "lr": self._lr(), "samples_per_s": rate, "size": self.plan.sizes[self.epoch]}
            rundir.append_metrics(self.out, record)
            for k, v in losses.items():
                self.tb.add_scalar(f"train/loss_{k}", v, self.step)
            self.tb.add_scalar("train/lr", self._lr(), self.step)
            self.tb.add_scalar("train/samples_per_s", rate, self.step)
        window.reset()

    def _evaluate(self, grid: bool = False) -> None:
        from maskdepth.evaluate import evaluate_batches

        if not self.data.has_eval():
            return
        if self.place.distributed:  # every rank evaluates rank 0's weights and statistics
            import torch.distributed as dist

            for b in self.model.buffers():
                dist.broadcast(b, 0)
        first: list[dict[str, torch.Tensor]] = []

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
        epoch = self.epoch + (1 if self.batch_in_epoch else 0)  # 1-based: the epoch just run
        record = {"split": self.config.data.eval_split if self.data.dataset is not None else "held-out", "step": self.step, "epoch": epoch,
                  "loss": result.losses, "metrics": result.metrics, "samples": result.samples}
        self.last_eval = record
        improved = self._update_best(result)
        if not self.place.main:
            return
        rundir.append_metrics(self.out, record)
        for k, v in result.losses.items():
            self.tb.add_scalar(f"test/loss_{k}", v, self.step)
        for k, v in result.metrics.items():
            self.tb.add_scalar(f"test/{k}", v, self.step)
        if grid and first and self.config.train.samples:
            self._sample_grid(first[0], epoch)
        if improved:
            from maskdepth.checkpoint import save_checkpoint

            save_checkpoint(self.out / rundir.BEST, self.model, self._header(record))

    def _update_best(self, result) -> bool:
        name = self.config.train.best_metric
        if name == "loss":
            value, higher = result.losses.get("total", math.nan), False
        else:
            from maskdepth.metrics import METRIC_NAMES

            value, higher = result.metrics.get(name, math.nan), METRIC_NAMES[name][1]
        if math.isnan(value):
            return False
        better = self.best is None or (value > self.best if higher else value < self.best)
        if better:
            self.best = value
        return better

    def _sample_grid(self, batch: dict[str, torch.Tensor], epoch: int) -> None:
        from maskdepth.evaluate import cpu_sample, forward_batch, sample_grid
        from maskdepth.viz import save_png

        k = self.config.train.samples
        batch = {key: v[:k] for key, v in batch.items()}
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.place.device.type, dtype=torch.bfloat16, enabled=self.amp):
            mask_logits, depth = forward_batch(self.model, batch["bg"], batch["image"])
        rows = [cpu_sample(batch, mask_logits, depth, i) for i in range(batch["image"].shape[0])]
        grid = sample_grid(rows, self.data.depth_max)
        save_png(self.out / "samples" / f"epoch-{epoch:04d}-step-{self.step:07d}.png", grid)
        self.tb.add_image("samples", grid, self.step, dataformats="HWC")

    def _header(self, eval_record: dict[str, Any] | None) -> dict[str, Any]:
        size = self.plan.sizes[min(self.epoch, len(self.plan.sizes) - 1)]
        return {"depth": {"unit": self.data.depth_unit, "max": self.data.depth_max, "scale": self.data.depth_scale},
                "train_size": [size, size], "dataset": self.data.describe, "step": self.step,
                "epoch": self.epoch, "init": self.init_from,
                "metrics": (eval_record or {}).get("metrics", {})}

    def _checkpoint(self) -> None:
        """last.safetensors and the resumable state, both at the current step (state first: it is what
        --resume reads)."""
        from maskdepth.checkpoint import save_checkpoint

        data_state = self.data.state_dict()
        if self.place.distributed and data_state:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.place.world_size
            dist.all_gather_object(gathered, data_state)
            data_state = {"ranks": gathered}
        elif data_state:
            data_state = {"ranks": [data_state]}
        if not self.place.main:
            return
        state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rundir.rng_state(), "data": data_state, "best": self.best, "bad_in_row": self.bad_in_row,
            "train_time": self.train_time, "world_size": self.place.world_size,
        }
        rundir.save_state(self.out, state)
        save_checkpoint(self.out / rundir.LAST, self.model, self._header(self.last_eval))

    def _load_state(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.place.world_size:
            raise UserError(f"{self.out}: the run was made with {state['world_size']} process(es); resume it "
                            f"with the same number (now {self.place.world_size})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best, self.bad_in_row, self.train_time = state["best"], state["bad_in_row"], state["train_time"]
        if state["data"]:
            self.data.load_state_dict(state["data"]["ranks"][self.place.rank])
        self.guard.keep()
        rundir.set_rng_state(state["rng"])
        if self.place.main:
            print(f"resuming {self.out} at step {self.step} (epoch {self.epoch + 1}, batch "
                  f"{self.batch_in_epoch})", file=sys.stderr)

    def _inputs(self) -> list[str | None]:
        """What the run reads, which --force must never remove: the dataset and the initial weights."""
        init = self.config.model.init
        return [self.config.data.dir or None, init if init not in ("", "default") else None]

    def _barrier(self) -> None:
        if self.place.distributed:
            import torch.distributed as dist

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

