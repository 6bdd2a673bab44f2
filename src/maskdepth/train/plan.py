"""How long a run is and how its learning rate moves: the per-epoch plan (side, batch size, steps) and the
scheduler stepped once per training step."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maskdepth.train.config import Config


@dataclass(frozen=True)
class TrainPlan:
    """Per epoch: side, global batch size and number of steps; the step each epoch starts at; total steps."""

    sizes: list[int]
    batch_sizes: list[int]
    steps: list[int]
    starts: list[int]
    total: int

    def epoch_of(self, step: int) -> int:
        return bisect.bisect_right(self.starts, step) - 1


def make_plan(config: Config, steps_per_epoch: Callable[[int, int, int], int]) -> TrainPlan:
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
    return TrainPlan(sizes, batch_sizes, steps, starts, total)


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer, plan: TrainPlan):
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
