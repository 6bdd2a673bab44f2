"""Loader: batch dict format, seeded order, rank/worker split, resume by skip_batches, one-line worker errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdepth.codecs import encode_depth_png, encode_jpeg, encode_png
from maskdepth.data import loader as loader_mod
from maskdepth.data.augment import AugmentConfig
from maskdepth.data.capture import CaptureConfig
from maskdepth.data.format import FORMAT, FORMAT_VERSION, DatasetDir, background_files, shard_name
from maskdepth.data.loader import consumer_parts, make_loader, round_robin_take
from maskdepth.data.shards import write_shard
from maskdepth.errors import UserError

SCALE = 0.001  # metres per depth unit
BG_DEPTH_MM = 3000


def sample_arrays(i: int, bg_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fg_bg, mask, depth (uint16 mm) of sample i: a square whose depth (100 + i mm) identifies the sample."""
    h, w = bg_rgb.shape[:2]
    s = max(4, min(h, w) // 3)
    y0, x0 = (3 * i) % (h - s), (5 * i) % (w - s)
    image, mask = bg_rgb.copy(), np.zeros((h, w), np.uint8)
    depth = np.full((h, w), BG_DEPTH_MM, np.uint16)
    image[y0:y0 + s, x0:x0 + s] = (200, 40 + i % 100, 30)
    mask[y0:y0 + s, x0:x0 + s] = 255
    depth[y0:y0 + s, x0:x0 + s] = 100 + i
    return image, mask, depth


def write_dataset(root: Path, n_train: int = 24, n_test: int = 8, size: tuple[int, int] = (32, 40),
                  train_shards: int = 3, test_shards: int = 1, n_bg: int = 2,
                  record_counts: bool = True) -> Path:
    """A tiny dataset folder: n_bg flat-colour backgrounds, squares pasted on them; sample ids in their depth."""
    h, w = size
    bgs = []
    for b in range(n_bg):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:] = (30 + 60 * b, 90, 160 - 40 * b)
        rgb[:, : w // 2, 1] += 40  # a vertical edge, so flips show
        paths = background_files(root, b)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        paths[0].write_bytes(encode_png(rgb))
        paths[1].write_bytes(encode_depth_png(np.full((h, w), BG_DEPTH_MM * SCALE), SCALE))
        bgs.append(rgb)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "size": [h, w], "source": "test",
            "depth": {"unit": "metres", "scale": SCALE, "max": 4.0},
            "shards": {}, "counts": {"train": n_train, "test": n_test, "backgrounds": n_bg}, "shard_counts": {}}
    first = 0
    for split, n, k in (("train", n_train, train_shards), ("test", n_test, test_shards)):
        ids = list(range(first, first + n))
        first += n
        names, counts = [], []
        for s, chunk in enumerate(np.array_split(ids, k)):
            samples = []
            for i in chunk.tolist():
                image, mask, depth = sample_arrays(i, bgs[i % n_bg])
                samples.append((f"{i:06d}", {"fg_bg.jpg": encode_jpeg(image, 95), "mask.png": encode_png(mask),
                                             "depth.png": encode_png(depth),
                                             "json": json.dumps({"bg": i % n_bg}).encode()}))
            names.append(shard_name(split, s))
            counts.append(write_shard(root / "shards" / names[-1], samples))
        meta["shards"][split], meta["shard_counts"][split] = names, counts
    if not record_counts:
        del meta["shard_counts"]
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def ids_of(batch: dict[str, torch.Tensor]) -> list[int]:
    """Sample ids of an unaugmented batch: the nearest depth is 100 + id millimetres."""
    d = batch["depth"].flatten(1).min(1).values
    return [int(round(v / SCALE)) - 100 for v in d.tolist()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"))


def test_batch_dict_format(data):
    loader = make_loader(data, "train", 4, 24, train=True, augment=AugmentConfig(rotate=0.5),
                         capture=CaptureConfig(), workers=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    for b in batches:
        assert set(b) == {"bg", "image", "mask", "depth", "depth_valid"}
        for k, c in (("bg", 3), ("image", 3), ("mask", 1), ("depth", 1), ("depth_valid", 1)):
            assert b[k].shape == (4, c, 24, 24) and b[k].dtype == torch.float32, k
        for k in ("bg", "image", "mask"):
            assert 0 <= b[k].min() and b[k].max() <= 1, k
        assert torch.equal(b["depth_valid"], (b["depth"] > 0).float())
        assert b["depth"].max() <= BG_DEPTH_MM * SCALE + 1e-6
        assert b["mask"].max() > 0.5  # the squares are there


def test_test_split_is_plain_and_in_order(data):
    loader = make_loader(data, "test", 3, None, train=False, workers=0)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [3, 3, 2]  # drop_last False
    assert sum((ids_of(b) for b in batches), []) == list(range(24, 32))
    b = batches[0]
    assert b["image"].shape[-2:] == (32, 40)
    _, mask, depth = sample_arrays(24, np.zeros((32, 40, 3), np.uint8))
    assert torch.equal(b["mask"][0, 0], torch.from_numpy(mask).float() / 255)
    assert torch.allclose(b["depth"][0, 0], torch.from_numpy(depth.astype(np.float32)) * SCALE)


def test_order_is_seeded(data):
    def order(seed, epoch, workers=2):
        return [ids_of(b) for b in make_loader(data, "train", 4, None, train=True, seed=seed, epoch=epoch,
                                               workers=workers)]

    a = order(0, 0)
    assert a == order(0, 0)
    assert a != order(0, 1) and a != order(1, 0)
    assert sorted(sum(a, [])) == list(range(24))  # 3 shards of 8 over 2 workers: 16 + 8, all full batches


def test_ranks_and_workers_split_without_overlap(data, monkeypatch):
    for split, total in (("train", range(24)), ("test", range(24, 32))):  # 3 shards; 1 shard (stride path)
        seen = []
        for rank in (0, 1):
            monkeypatch.setattr(loader_mod, "_dist", lambda r=rank: (r, 2))
            loader = make_loader(data, split, 2, None, train=False, workers=2)
            got = sum((ids_of(b) for b in loader), [])
            assert len(loader) == sum(1 for _ in loader)
            seen.append(got)
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(total)


def test_train_ranks_get_equal_batch_counts(data, monkeypatch):
    lengths = []
    for rank in (0, 1):
        monkeypatch.setattr(loader_mod, "_dist", lambda r=rank: (r, 2))
        loader = make_loader(data, "train", 4, None, train=True, workers=2)
        lengths.append((len(loader), len(list(loader))))
    assert lengths[0] == lengths[1] and lengths[0][0] == lengths[0][1] > 0


def test_skip_batches_gives_the_tail(data):
    kw = dict(train=True, augment=AugmentConfig(), capture=CaptureConfig(), workers=2, seed=3, epoch=1)
    full = list(make_loader(data, "train", 2, 24, **kw))
    for k in (1, 5):
        tail = list(make_loader(data, "train", 2, 24, skip_batches=k, **kw))
        assert len(tail) == len(full) - k
        for a, b in zip(tail, full[k:]):
            assert all(torch.equal(a[key], b[key]) for key in a)


def test_joint_geometry_through_the_loader(data):
    """Augmented batches keep image, mask and depth aligned: the red square is where the mask and near depth are."""
    loader = make_loader(data, "train", 4, 24, train=True, workers=0,
                         augment=AugmentConfig(hflip=0.5, crop=1.0, photometric=0.0))
    for b in loader:
        red = (b["image"][:, 0] > 0.6) & (b["image"][:, 2] < 0.3)
        core = (b["mask"][:, 0] == 1) & (b["depth"][:, 0] < 1.0)
        assert (red == core).float().mean() > 0.97


def test_counts_from_tar_headers(tmp_path, data):
    root = write_dataset(tmp_path / "nocounts", record_counts=False)
    ds = DatasetDir(root)
    assert ds.shard_counts("train") == DatasetDir(data).meta["shard_counts"]["train"]
    assert len(make_loader(root, "test", 3, None, train=False, workers=0)) == 3


def test_plan_helpers():
    assert consumer_parts([5, 5, 5], [2, 0, 1], 2) == [[(2, 1, 0), (1, 1, 0)], [(0, 1, 0)]]
    # fewer shards than consumers: every sample to exactly one consumer
    parts = consumer_parts([3, 4], [0, 1], 3)
    got = [[(s, i) for s, stride, off in p for i in range(4 if s else 3) if i % stride == off] for p in parts]
    assert sorted(sum(got, [])) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert round_robin_take([3, 1, 2], 4) == ([2, 1, 1], 1)
    assert round_robin_take([3, 1, 2], 99) == ([3, 1, 2], 1)
    assert round_robin_take([3, 1, 2], 0) == ([0, 0, 0], 0)


def test_damaged_sample_is_one_line_from_a_worker(tmp_path):
    root = write_dataset(tmp_path / "bad", n_train=8, n_test=2, train_shards=2)
    path = root / "shards" / shard_name("train", 1)
    bad = [(f"bad{i:03d}", {"fg_bg.jpg": b"not a jpeg", "mask.png": b"x", "depth.png": b"x",
                            "json": b'{"bg": 0}'}) for i in range(4)]
    write_shard(path, bad)
    loader = make_loader(root, "train", 2, None, train=False, workers=2)
    with pytest.raises(UserError) as e:
        list(loader)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "bad000" in msg and "Traceback" not in msg


def test_truncated_shard_and_missing_metadata(tmp_path):
    root = write_dataset(tmp_path / "trunc", record_counts=False)
    path = root / "shards" / shard_name("train", 0)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UserError, match="truncated or not a tar"):  # found while counting, in this process
        make_loader(root, "train", 2, None, train=False)
    counted = write_dataset(tmp_path / "counted")
    path = counted / "shards" / shard_name("train", 1)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UserError, match="damaged|truncated") as e:  # found by a worker while reading
        list(make_loader(counted, "train", 2, None, train=False, workers=2))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    (root / "metadata.json").unlink()
    with pytest.raises(UserError, match="not a maskdepth dataset"):
        make_loader(root, "train", 2, None, train=False)
