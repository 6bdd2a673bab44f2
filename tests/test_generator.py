"""The on-the-fly generator: batch dict contract, seeded reproducible stream, exact resume, dataset banks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskdepth.data.capture import CaptureConfig
from maskdepth.data.generator import OnTheFlyGenerator
from maskdepth.data.make import MakeConfig, make_dataset


@pytest.fixture(scope="module")
def gen_args():
    return dict(n_backgrounds=3, n_cutouts=4, size=(40, 56), seed=3, batch_size=6)


def test_batch_dict_contract(gen_args):
    gen = OnTheFlyGenerator.procedural(**gen_args)
    batch = next(gen)
    assert set(batch) == {"bg", "image", "mask", "depth", "depth_valid"}
    for k in ("bg", "image"):
        assert batch[k].shape == (6, 3, 40, 56) and batch[k].dtype == torch.float32
        assert 0 <= batch[k].min() and batch[k].max() <= 1
    for k in ("mask", "depth", "depth_valid"):
        assert batch[k].shape == (6, 1, 40, 56) and batch[k].dtype == torch.float32
    assert 0 <= batch["mask"].min() and batch["mask"].max() <= 1 and batch["mask"].sum() > 0
    assert (batch["depth"] > 0).all() and (batch["depth_valid"] == 1).all()  # rooms: depth known everywhere
    assert batch["depth"].max() <= gen.depth_max
    assert not torch.equal(batch["bg"], batch["image"])
    assert gen.next_batch(2)["image"].shape[0] == 2


def test_same_seed_same_stream_and_exact_resume(gen_args):
    a = OnTheFlyGenerator.procedural(**gen_args)
    b = OnTheFlyGenerator.procedural(**gen_args)
    first = [next(a) for _ in range(3)]
    for x, y in zip(first, (next(b) for _ in range(3))):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(first[0]["image"], first[1]["image"])
    state = a.state_dict()
    expected = next(a)
    c = OnTheFlyGenerator.procedural(**gen_args)
    c.load_state_dict(state)
    resumed = next(c)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    other = OnTheFlyGenerator.procedural(**{**gen_args, "seed": 4})
    assert not torch.equal(next(other)["image"], first[0]["image"])


def test_capture_none_keeps_the_clean_background(gen_args):
    clean = OnTheFlyGenerator.procedural(**gen_args, capture=None)
    jittered = OnTheFlyGenerator.procedural(**gen_args, capture=dataclasses.replace(CaptureConfig.off(), noise_p=1.0))
    x, y = next(clean), next(jittered)
    # the same draws up to the capture step: same composites, different bg inputs
    assert torch.equal(x["image"], y["image"]) and not torch.equal(x["bg"], y["bg"])
    assert (x["image"] == x["bg"]).float().mean() > 0.5  # clean bg: beyond the object and shadow, the same pixels
    assert (y["image"] == y["bg"]).float().mean() < 0.01  # captured again: no pixel to threshold on


def test_from_dataset_uses_the_split_backgrounds(tmp_path):
    out = tmp_path / "d"
    make_dataset(out, MakeConfig(size=(48, 48), backgrounds=3, foregrounds=2, per_pair=1, shard_size=50,
                                 test_fraction=0.34), workers=1, progress=False)
    train = OnTheFlyGenerator.from_dataset(out, "train", batch_size=4, seed=0)
    test = OnTheFlyGenerator.from_dataset(out, "test", batch_size=4, seed=0)
    assert len(train.bgs) == 2 and len(test.bgs) == 1 and len(train.cutouts) == 2
    assert train.depth_max == test.depth_max > 0
    batch = next(test)
    assert batch["image"].shape == (4, 3, 48, 48)


def _stats(device: str, n_batches: int = 8) -> tuple[float, float]:
    gen = OnTheFlyGenerator.procedural(4, 6, 64, seed=0, batch_size=64, device=device)
    cover, depth = [], []
    for _ in range(n_batches):
        b = next(gen)
        cover.append(b["mask"].mean().item())
        depth.append(b["depth"].mean().item())
    return sum(cover) / len(cover), sum(depth) / len(depth)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_same_distribution_as_cpu():
    cpu_cover, cpu_depth = _stats("cpu")
    gpu_cover, gpu_depth = _stats("cuda")
    assert abs(gpu_cover - cpu_cover) < 0.25 * cpu_cover
    assert abs(gpu_depth - cpu_depth) < 0.1 * cpu_depth
