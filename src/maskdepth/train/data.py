"""Training and evaluation batches for the loop, from dataset shards or the on-the-fly generator.

Either way the loop sees the same thing: this rank's batch dicts on its device, epochs of a known number of
steps that can start part-way (resume), and an evaluation set that is the same at every evaluation and for any
number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from maskdepth.data.augment import AugmentConfig, augment_batch, resize_batch
from maskdepth.data.banks import seed_for
from maskdepth.data.capture import CaptureConfig
from maskdepth.data.compose import ComposeConfig
from maskdepth.data.format import DEPTH_SCALE, DatasetDir
from maskdepth.data.generator import OnTheFlyGenerator
from maskdepth.data.loader import make_loader
from maskdepth.device import to_device
from maskdepth.errors import UserError
from maskdepth.evaluate import first_samples
from maskdepth.train.config import Config
from maskdepth.train.dist import DeviceRank

Batch = dict[str, torch.Tensor]
# seed offset of the held-out generator stream (evaluation without a dataset)
EVAL_SEED_OFFSET = 1_000_003
# seed stream of the joint augmentation of generated batches (beside data/banks.py's streams)
AUGMENT_STREAM = 101


def compose_of(config: Config) -> ComposeConfig:
    """The composition a run's generator draws with: its [compose]."""
    return ComposeConfig(**config.compose)


def capture_of(config: Config) -> CaptureConfig | None:
    """The capture effects of a run's generator: its [capture], or none with data.capture off."""
    return CaptureConfig(**config.capture) if config.data.capture else None


class TrainData:
    """Batches for one run. `depth_max`, `depth_unit`, `depth_scale` and `describe` say what the data is."""

    def __init__(self, config: Config, place: DeviceRank):
        self.config, self.place = config, place
        d = config.data
        self.channels_last = place.device.type == "cuda" and config.train.channels_last
        self.dataset = None
        if d.dir:
            self.dataset = DatasetDir(d.dir)
        self.generator = None
        if d.train_source != "shards":
            # every rank its own stream: together they are one larger batch of new samples
            self.generator = self._make_generator(config.train.seed + place.rank)
            self.depth_max = float(self.generator.depth_max)
            procedural = d.train_source == "procedural"
            self.depth_unit = "metres" if procedural else self.dataset.depth_unit
            # the words of run.json and checkpoint headers since before train_source
            self.describe = "generator procedural" if procedural else f"generator dataset ({d.dir})"
        else:
            self.depth_max = self.dataset.depth_max
            self.depth_unit = self.dataset.depth_unit
            self.describe = str(d.dir)
        if self.dataset is not None:
            self.depth_scale = self.dataset.depth_scale
        else:
            self.depth_scale = DEPTH_SCALE  # what `data make` would store for these scenes
        self._held_out: list[Batch] | None = None

    def _make_generator(self, seed: int):
        d = self.config.data
        capture, compose = capture_of(self.config), compose_of(self.config)
        if d.train_source == "procedural":
            return OnTheFlyGenerator.procedural(d.gen_backgrounds, d.gen_cutouts, d.size, seed, compose=compose,
                                                capture=capture, device=self.place.device)
        return OnTheFlyGenerator.from_dataset(d.dir, d.train_split, seed=seed, compose=compose, capture=capture,
                                              device=self.place.device)

    def _augment(self):
        return AugmentConfig(**self.config.augment) if self.config.data.augment else None

    # -- training -----------------------------------------------------------------------------------------
    def per_rank(self, global_batch: int) -> int:
        if global_batch % self.place.world_size:
            raise UserError(f"batch size {global_batch} does not split evenly over {self.place.world_size} "
                            "processes; give a multiple of the process count")
        return global_batch // self.place.world_size

    def _loader(self, epoch: int, size: int, global_batch: int, skip: int):
        d = self.config.data
        return make_loader(d.dir, d.train_split, self.per_rank(global_batch), size, train=True,
                           augment=self._augment(), capture=capture_of(self.config), workers=d.workers,
                           seed=self.config.train.seed, epoch=epoch, skip_batches=skip,
                           pin_memory=self.place.device.type == "cuda")

    def steps_per_epoch(self, epoch: int, size: int, global_batch: int) -> int:
        """Steps in `epoch`: the loader's length (the same on every rank), capped by train.epoch_steps; with
        the generator, train.epoch_steps."""
        cap = self.config.train.epoch_steps
        if self.generator is not None:
            if cap <= 0:
                raise UserError("[train] epoch_steps must be > 0 with the on-the-fly generator (its stream "
                                "has no end); e.g. --set train.epoch_steps=500")
            return cap
        n = len(self._loader(epoch, size, global_batch, 0))
        if n == 0:
            raise UserError(f"{self.config.data.dir}: split '{self.config.data.train_split}' gives no full "
                            f"batch of {global_batch} (over {self.place.world_size} process(es) x "
                            f"{max(1, self.config.data.workers)} loader worker(s)); use a smaller --batch-size "
                            "or fewer --workers")
        return min(n, cap) if cap > 0 else n

    def epoch(self, epoch: int, size: int, global_batch: int, skip: int) -> Iterator[Batch]:
        """This rank's batches of `epoch` at `size`, starting after `skip` batches."""
        if self.generator is not None:
            return self._generated(size, self.per_rank(global_batch))
        loader = self._loader(epoch, size, global_batch, skip)
        return (to_device(batch, self.place.device, self.channels_last) for batch in loader)

    def _generated(self, size: int, batch_size: int) -> Iterator[Batch]:
        # Joint augmentation (crops: other scales and framings) works sample by sample, which suits the host; on
        # a GPU the generator's own variety stands alone, so that nothing there waits on per-sample work.
        augment = self._augment() if self.generator.device.type == "cpu" else None
        while True:
            step = self.generator.step
            batch = self.generator.next_batch(batch_size)
            if augment is not None:  # seeded by the generator's position, so a resumed run draws the same crops
                gen = torch.Generator().manual_seed(seed_for(self.generator.seed, AUGMENT_STREAM, step))
                batch = augment_batch(batch, augment, size, gen)
            elif batch["image"].shape[-1] != size:  # progressive resizing: the banks stay at data.size
                batch = resize_batch(batch, size)
            yield to_device(batch, self.place.device, self.channels_last)

    def state_dict(self) -> dict[str, Any]:
        """The generator's position (the loader's position is the step count)."""
        return {} if self.generator is None else self.generator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.generator is not None:
            self.generator.load_state_dict(state)

    # -- evaluation ----------------------------------------------------------------------------------------
    def has_eval(self) -> bool:
        return self.config.data.eval_source != "none"

    def eval_batches(self, global_batch: int) -> Iterator[Batch] | list[Batch]:
        """This rank's part of the evaluation set at data.size: with eval_source "split" the dataset's eval split
        (the loader splits it over the ranks), with "held-out" generator batches drawn once with another seed."""
        d = self.config.data
        if d.eval_source == "split":
            return self._eval_from_shards(self.per_rank(global_batch))
        if self._held_out is None:
            # drawn at the global batch size and sliced, so the set does not depend on the process count
            gen = self._make_generator(self.config.train.seed + EVAL_SEED_OFFSET)
            bs = self.per_rank(global_batch)
            part = slice(self.place.rank * bs, (self.place.rank + 1) * bs)
            self._held_out = [to_device({k: v[part] for k, v in gen.next_batch(global_batch).items()},
                                        self.place.device, self.channels_last) for _ in range(d.gen_eval_batches)]
        return self._held_out

    def _eval_from_shards(self, batch_size: int) -> Iterator[Batch]:
        d = self.config.data
        loader = make_loader(d.dir, d.eval_split, batch_size, d.size, train=False, workers=d.workers,
                             seed=self.config.train.seed, pin_memory=self.place.device.type == "cuda")
        for batch in first_samples(loader, -(-d.eval_samples // self.place.world_size)):
            yield to_device(batch, self.place.device, self.channels_last)
