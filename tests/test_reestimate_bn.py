"""scripts/reestimate_bn.py: BatchNorm statistics become the plain average over every pass at every size."""

import torch
from torch import nn

from conftest import load_script
from maskdepth.data.augment import resize_batch


class _Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, bg, image):
        return self.bn(image - bg)


def test_statistics_are_the_average_over_sizes_and_batches():
    g = torch.Generator().manual_seed(0)
    batches = [{"bg": torch.rand(4, 3, 32, 32, generator=g), "image": torch.rand(4, 3, 32, 32, generator=g) * (k + 1),
                "mask": torch.zeros(4, 1, 32, 32), "depth": torch.ones(4, 1, 32, 32),
                "depth_valid": torch.ones(4, 1, 32, 32)} for k in range(3)]
    model = _Norm()
    model.bn.running_mean.fill_(5.0)  # what the last epoch left: must not survive
    passes = load_script("reestimate_bn").reestimate(model, iter(batches), [16, 32])
    assert passes == 6 and not model.training and model.bn.momentum == 0.1
    diffs = [b["image"] - b["bg"] for b in batches]
    diffs += [(lambda r: r["image"] - r["bg"])(resize_batch(b, 16)) for b in batches]
    expected = torch.stack([d.mean(dim=(0, 2, 3)) for d in diffs]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, expected, atol=1e-5, rtol=0)


def test_batches_are_drawn_with_the_runs_own_compose(tmp_path):
    script = load_script("reestimate_bn")
    ckpt = tmp_path / "last.safetensors"
    compose, capture, source = script.stage_data(ckpt, None)
    assert source == "defaults" and compose.camo_luma == 0.0 and capture is not None
    (tmp_path / "config.toml").write_text('[compose]\ncamo_luma = 0.5\nclutter = 2\n\n'
                                          '[data]\ntrain_source = "procedural"\ncapture = false\n')
    compose, capture, source = script.stage_data(ckpt, None)
    assert (compose.camo_luma, compose.clutter, capture) == (0.5, 2, None)
    assert source == str(tmp_path / "config.toml")
    compose, _, source = script.stage_data(ckpt, "default-weights-camo")  # --config wins over the file
    assert compose.camo_luma == 0.5 and compose.clutter == 0 and source == "default-weights-camo"
