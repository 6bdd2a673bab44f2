"""Batches from a dataset folder's shards: a torch IterableDataset behind a DataLoader.

Batches are formed inside the workers (DataLoader(batch_size=None)) so that resizing, joint augmentation and
capture jitter run batched with torch in the worker that decoded the samples. Each consumer (DDP rank x
DataLoader worker) reads its own shards; when there are fewer shards than consumers, every consumer reads all of
them and keeps every C-th sample. The sample order is a pure function of (seed, epoch, world size, workers): the
shard order is shuffled per epoch from (seed, epoch), each consumer shuffles through a buffer seeded from (seed,
epoch, rank, worker), and each batch's augmentation draws from a generator seeded from those and the batch's
index, so `skip_batches=k` reproduces exactly the tail of the full epoch without decoding the skipped samples.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskdepth.codecs import decode_depth_png, decode_gray, decode_rgb
from maskdepth.data.augment import AugmentConfig, as_hw, augment_batch, empty_batch, resize_batch
from maskdepth.data.capture import CaptureConfig, apply_camera, apply_capture
from maskdepth.data.format import DatasetDir, background_files, read_background_file
from maskdepth.data.shards import iter_counted_shard
from maskdepth.errors import UserError

SHUFFLE_BUFFER = 512  # samples (still encoded) held by each consumer's shuffle buffer
_ERROR = "__error__"  # key of the one-item dict a worker yields instead of raising UserError

Part = tuple[int, int, int]  # (shard index, stride, offset): the shard's samples i with i % stride == offset


# ---------------------------------------------------------------------------------------------------- parts


def consumer_parts(counts: list[int], order: list[int], consumers: int) -> list[list[Part]]:
    """What each of `consumers` reads, in order: whole shards round-robin when there are enough of them, else
    every shard with a stride so that each sample goes to exactly one consumer."""
    if len(order) >= consumers:
        return [[(s, 1, 0) for s in order[c::consumers]] for c in range(consumers)]
    parts: list[list[Part]] = [[] for _ in range(consumers)]
    start = 0
    for s in order:
        for c in range(consumers):
            parts[c].append((s, consumers, (c - start) % consumers))
        start += counts[s]
    return parts


def _part_len(count: int, part: Part) -> int:
    _, stride, offset = part
    return max(0, (count - offset + stride - 1) // stride)


def round_robin_take(batches: list[int], k: int) -> tuple[list[int], int]:
    """A DataLoader takes one batch from each worker in turn, passing over workers that have finished. Returns
    how many of each worker's batches are among the first k, and the worker whose turn comes next."""
    taken, turn = [0] * len(batches), 0
    r = 0
    while k > 0 and r < max(batches, default=0):
        for w, b in enumerate(batches):
            if k > 0 and r < b:
                taken[w] += 1
                k -= 1
                turn = (w + 1) % len(batches)
        r += 1
    return taken, turn


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]
               & 0x7FFFFFFFFFFFFFFF)


def _dist() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------------- dataset


class ShardStream(IterableDataset):
    """Yields batch dicts for one (rank, worker) consumer at a time; see the module doc."""

    def __init__(self, ds: DatasetDir, split: str, batch_size: int, size: tuple[int, int], *,
                 augment: AugmentConfig | None, capture: CaptureConfig | None, workers: int, seed: int,
                 epoch: int, shuffle: bool, drop_last: bool, rank: int, world: int, skip_batches: int,
                 equalise: bool):
        self.root, self.split = ds.root, split
        self.paths = [str(p) for p in ds.shards(split)]
        self.counts = ds.shard_counts(split)
        self.native, self.size, self.depth_scale = ds.size, size, ds.depth_scale
        self.batch_size, self.augment, self.capture = batch_size, augment, capture
        self.seed, self.epoch, self.shuffle, self.drop_last = seed, epoch, shuffle, drop_last
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        order = list(range(len(self.paths)))
        if shuffle:
            random.Random(_seed(seed, epoch)).shuffle(order)
        self.parts = consumer_parts(self.counts, order, self.world * self.workers)
        per_rank = [[self._batches_of(r * self.workers + w) for w in range(self.workers)]
                    for r in range(self.world)]
        mine = per_rank[rank]
        # DDP ranks must step together: in training every rank stops at the shortest rank's length
        self.epoch_len = min(sum(b) for b in per_rank) if equalise else sum(mine)
        # resuming: each worker skips its share of the first k batches, and the DataLoader's worker 0 plays the
        # worker whose turn came next, so the interleaving continues exactly where the full epoch was
        self.skip, self.turn = round_robin_take(mine, min(skip_batches, self.epoch_len))
        self.length = self.epoch_len - sum(self.skip)

    def _batches_of(self, consumer: int) -> int:
        n = sum(_part_len(self.counts[p[0]], p) for p in self.parts[consumer])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # -- in the worker

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.turn) % self.workers
        try:
            yield from self._batches(worker)
        except UserError as e:
            yield {_ERROR: str(e)}  # re-raised in the main process as one line, not a worker traceback

    def _samples(self, consumer: int) -> Iterator[tuple[str, str, dict]]:
        for shard, stride, offset in self.parts[consumer]:
            path = self.paths[shard]
            for i, (key, sample) in enumerate(iter_counted_shard(path, self.counts[shard])):
                if i % stride == offset:
                    yield path, key, sample

    def _batches(self, worker: int) -> Iterator[dict]:
        consumer = self.rank * self.workers + worker
        samples = self._samples(consumer)
        if self.shuffle:
            samples = _shuffled(samples, SHUFFLE_BUFFER, random.Random(_seed(self.seed, self.epoch, consumer)))
        bgs: dict[int, np.ndarray] = {}
        group: list[tuple[str, str, dict]] = []
        j = 0
        for s in samples:
            group.append(s)
            if len(group) == self.batch_size:
                if j >= self.skip[worker]:
                    yield self._make_batch(group, bgs, consumer, j)
                group, j = [], j + 1
        if group and not self.drop_last and j >= self.skip[worker]:
            yield self._make_batch(group, bgs, consumer, j)

    def _background(self, bg_id: int, bgs: dict[int, np.ndarray]) -> np.ndarray:
        if bg_id not in bgs:
            bgs[bg_id] = read_background_file(background_files(self.root, bg_id)[0], decode_rgb, self.native)
        return bgs[bg_id]

    def _make_batch(self, group: list[tuple[str, str, dict]], bgs: dict[int, np.ndarray], consumer: int,
                    index: int) -> dict[str, torch.Tensor]:
        n, (h, w) = len(group), self.native
        image = np.empty((n, h, w, 3), np.uint8)
        bg = np.empty((n, h, w, 3), np.uint8)
        mask = np.empty((n, 1, h, w), np.uint8)
        depth = np.empty((n, 1, h, w), np.uint16)
        for i, (path, key, sample) in enumerate(group):
            try:
                image[i] = decode_rgb(sample["fg_bg.jpg"])
                mask[i, 0] = decode_gray(sample["mask.png"])
                depth[i, 0] = decode_depth_png(sample["depth.png"])
                bg_id = int(json.loads(sample["json"])["bg"])
            except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:
                raise UserError(f"{path}: sample '{key}' is damaged or not {w}x{h} ({e}); delete the shard and "
                                "rerun the command that made the dataset") from None
            bg[i] = self._background(bg_id, bgs)
        batch = {"image": torch.from_numpy(image).permute(0, 3, 1, 2),  # channels-last views, no copy
                 "bg": torch.from_numpy(bg).permute(0, 3, 1, 2),
                 "mask": torch.from_numpy(mask),
                 "depth": torch.from_numpy(depth.astype(np.float32)).mul_(self.depth_scale)}
        gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, consumer, index))
        # in a worker, write the batch straight into shared memory: the DataLoader then hands it over as it is
        # instead of copying it there (each new 4 KiB page costs a fault; as float32 that is a large share of the
        # work per sample)
        out = empty_batch(n, self.size, _shared_empty if get_worker_info() is not None else torch.empty)
        if self.augment is not None:
            batch = augment_batch(batch, self.augment, self.size, gen, out=out)
        else:
            batch = resize_batch(batch, self.size, out=out)
        if self.capture is not None:  # one camera's response on both captures, then bg's own capture jitter
            image, bg = apply_camera(batch["image"], batch["bg"], self.capture, gen)
            batch["image"].copy_(image)
            batch["bg"].copy_(apply_capture(bg, self.capture, gen))
        return batch


def _shared_empty(*shape: int) -> torch.Tensor:
    """Uninitialised float32 tensor in shared memory, without the copy that Tensor.share_memory_() makes."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # torch-internal: keep a plain fallback
    if new_shared is None:
        return torch.empty(shape).share_memory_()
    return torch.empty(0).set_(new_shared(math.prod(shape) * 4), 0, shape)


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Stream shuffle through a buffer of `size` items."""
    buf: list = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        k = rng.randrange(size)
        yield buf[k]
        buf[k] = x
    rng.shuffle(buf)
    yield from buf


def _worker_init(_: int) -> None:
    # Workers each own one core's worth of work; torch's own threads would only fight over the cores.
    torch.set_num_threads(1)
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Let glibc reuse freed batch buffers instead of returning them to the OS and page-faulting them back in on
    the next batch (a large share of the per-batch time otherwise). Best effort: other C libraries are left be."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: batch-sized blocks come from the heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to this much freed memory
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------------- loader


class ShardLoader:
    """Iterable of batch dicts with len() = batches this rank yields; UserError from a worker is raised here."""

    def __init__(self, stream: ShardStream, loader: DataLoader):
        self.stream, self.loader = stream, loader

    def __len__(self) -> int:
        return self.stream.length

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.stream.length == 0:
            return
        for n, batch in enumerate(self.loader):
            if _ERROR in batch:
                raise UserError(batch[_ERROR])
            yield batch
            if n + 1 == self.stream.length:  # other ranks have no more: stop together
                return


def make_loader(data_dir: str | os.PathLike, split: str, batch_size: int, size: int | tuple[int, int] | None,
                *, train: bool, augment: AugmentConfig | None = None, capture: CaptureConfig | None = None,
                workers: int = 2, seed: int = 0, epoch: int = 0, skip_batches: int = 0,
                drop_last: bool | None = None, pin_memory: bool = False) -> ShardLoader:
    """Batch dicts (docs/ARCHITECTURE.md) of one split of the dataset folder `data_dir`, at `size` (int, (H, W), or
    None for the dataset's own size).

    train=True: shards shuffled per epoch, a shuffle buffer, drop_last, and every DDP rank gets the same number
    of batches. train=False: file order, every sample once (the last batch may be short). Either way `augment`
    (data/augment.py) and `capture` (capture jitter on bg, data/capture.py) are applied when given and not when
    None. `skip_batches=k` starts the epoch at batch k (resume) without decoding the first k batches.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1 (got {batch_size})")
    ds = DatasetDir(data_dir)
    rank, world = _dist()
    stream = ShardStream(ds, split, batch_size, as_hw(size) if size is not None else ds.size, augment=augment,
                         capture=capture, workers=workers, seed=seed, epoch=epoch, shuffle=train,
                         drop_last=train if drop_last is None else drop_last, rank=rank, world=world,
                         skip_batches=skip_batches, equalise=train)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        worker_init_fn=_worker_init if workers > 0 else None)
    return ShardLoader(stream, loader)
