"""The on-the-fly generator: an infinite, seeded stream of batch dicts composed on the device.

Banks of backgrounds and cutouts live on the device; each batch draws (background, cutout, flip) triples,
placements, camera response and capture jitter from one device generator and composites them with `data/compose.py`, the same code
`data make` runs. Batch k is a function of (seed, k) only (the generator is reseeded per batch), so the state to
resume is the batch count. The per-batch path reads nothing back to the host, so on a GPU it queues a few kernels
and returns: the GPU never waits on it.
"""

from __future__ import annotations

import os

import torch

from maskdepth.data.banks import (
    STREAM_STEP,
    BackgroundBank,
    CutoutBank,
    procedural_background,
    procedural_foreground,
    seed_for,
)
from maskdepth.data.capture import CaptureConfig, apply_camera, apply_capture
from maskdepth.data.clutter import furnish
from maskdepth.data.compose import ComposeConfig, composite, sample_placements
from maskdepth.data.format import DatasetMetadata, round_depth_max
from maskdepth.errors import UserError

Batch = dict[str, torch.Tensor]


class OnTheFlyGenerator:
    """`next(gen)` -> {bg, image, mask, depth, depth_valid} on `device` (docs/ARCHITECTURE.md batch dict).

    `capture=None` leaves both captures clean (no camera response, no bg capture jitter). `depth_max` bounds the depth of every batch (for the model's head).
    """

    def __init__(self, bgs: BackgroundBank, cutouts: CutoutBank, batch_size: int, seed: int,
                 compose: ComposeConfig = ComposeConfig(), capture: CaptureConfig | None = CaptureConfig(),
                 device: torch.device | str | None = None, depth_max: float | None = None):
        self.device = torch.device(device) if device is not None else bgs.device
        self.cutouts = cutouts.to(self.device)
        self.bgs = furnish(bgs.to(self.device), self.cutouts, compose.clutter, seed, compose)  # as data make does
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.compose, self.capture = compose, capture
        self.depth_max = depth_max if depth_max is not None else round_depth_max(float(bgs.depth.max()))
        self.step = 0
        self._gen = torch.Generator(device=self.device)

    def __iter__(self) -> OnTheFlyGenerator:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def next_batch(self, batch_size: int | None = None) -> Batch:
        n = self.batch_size if batch_size is None else int(batch_size)
        g, dev = self._gen, self.device
        g.manual_seed(seed_for(self.seed, STREAM_STEP, self.step))  # host-side only: no device sync
        self.step += 1
        bg_idx = torch.randint(len(self.bgs), (n,), generator=g, device=dev)
        fg_idx = torch.randint(len(self.cutouts), (n,), generator=g, device=dev)
        flip = torch.rand(n, generator=g, device=dev) < 0.5
        placement = sample_placements(self.bgs, self.cutouts, bg_idx, fg_idx, flip, g, self.compose)
        out = composite(self.bgs, self.cutouts, placement, self.compose)
        image, bg = out["image"], out["bg"]
        if self.capture is not None:  # one camera's response on both captures, then bg's own capture jitter
            image, bg = apply_camera(image, bg, self.capture, g)
            bg = apply_capture(bg, self.capture, g)
        return {"bg": bg, "image": image, "mask": out["mask"], "depth": out["depth"],
                "depth_valid": out["depth_valid"]}

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise UserError(f"generator state was saved with seed {state['seed']}, this run uses {self.seed}; "
                            "resume with the same seed")
        self.step = int(state["step"])

    @classmethod
    def procedural(cls, n_backgrounds: int, n_cutouts: int, size: int | tuple[int, int], seed: int,
                   batch_size: int = 32, compose: ComposeConfig = ComposeConfig(),
                   capture: CaptureConfig | None = CaptureConfig(), device: torch.device | str | None = None
                   ) -> OnTheFlyGenerator:
        """Procedural rooms and cutouts, the same ones `maskdepth data make --seed SEED` draws."""
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if n_backgrounds < 1 or n_cutouts < 1:
            raise UserError(f"the generator needs at least one background and one cutout, got {n_backgrounds} "
                            f"and {n_cutouts}")
        bgs = BackgroundBank.from_backgrounds([procedural_background(seed, i, hw) for i in range(n_backgrounds)])
        cutouts = CutoutBank.from_cutouts([procedural_foreground(seed, i) for i in range(n_cutouts)])
        return cls(bgs, cutouts, batch_size, seed, compose, capture, device)

    @classmethod
    def from_dataset(cls, dataset_dir: str | os.PathLike, split: str = "train", batch_size: int = 32,
                     seed: int = 0, compose: ComposeConfig = ComposeConfig(),
                     capture: CaptureConfig | None = CaptureConfig(), device: torch.device | str | None = None
                     ) -> OnTheFlyGenerator:
        """The backgrounds of `split` and all cutouts of a dataset made by `maskdepth data make`."""
        meta = DatasetMetadata.read(dataset_dir)
        ids = meta.split_backgrounds(split)
        if not ids:
            raise UserError(f"{dataset_dir}: split '{split}' has no backgrounds; use another split")
        bgs = BackgroundBank.from_dataset(dataset_dir, ids)
        cutouts = CutoutBank.from_dataset(dataset_dir)
        return cls(bgs, cutouts, batch_size, seed, compose, capture, device, depth_max=meta.depth_max)

