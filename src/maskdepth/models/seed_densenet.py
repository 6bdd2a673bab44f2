"""`seed-densenet`: seed preset 001, a full-resolution "dense" CNN without downsampling (1,977,280 parameters).

The document gives: 1,977,280 parameters, no pretrained model, bg and fg_bg as inputs, two outputs (mask with
BCE, depth with SSIM; loss = 2 * mask loss + depth loss), and links its net.py, whose layers we rebuild:
- trunk on the 6-channel stack (bg, image): conv 6->64, conv 64->64, residual (conv 64->64 x2), conv 64->128,
  conv 128->256, residual (conv 256->256 x2, no ReLU after the last), output conv 256->out; all 3x3, stride 1,
  conv-BN-ReLU, no pooling anywhere;
- a Siamese branch: the same two blocks (conv 3->32, depthwise 3x3 + pointwise 32->64) applied to bg and to
  image, concatenated (128), conv 128->256, output conv 256->out.
The document lists the Siamese branch as output 1 (the mask, BCE) and the trunk as output 2 (depth).

Inferred: the original output convs have 3 channels (the targets were then made grayscale); ours have 1, the
outputs being 1-channel maps: 1,968,064 parameters (-0.47%). Everything runs at full resolution, as in the
original, which makes this the most expensive seed preset per pixel.
"""

from __future__ import annotations

import torch
from torch import nn

from maskdepth.models.base import MaskDepthNet
from maskdepth.models.blocks import ConvNormAct
from maskdepth.models.registry import register


class SeedDenseNet(MaskDepthNet):
    stride = 1

    def __init__(self, depth_max: float = 10.0):
        super().__init__(depth_max)
        self.trunk_in = nn.Sequential(ConvNormAct(6, 64), ConvNormAct(64, 64))
        self.trunk_res1 = nn.Sequential(ConvNormAct(64, 64), ConvNormAct(64, 64))
        self.trunk_mid = nn.Sequential(ConvNormAct(64, 128), ConvNormAct(128, 256))
        self.trunk_res2 = nn.Sequential(ConvNormAct(256, 256), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256))
        self.trunk_out = nn.Conv2d(256, 1, 3, padding=1, bias=False)
        self.siamese = nn.Sequential(
            ConvNormAct(3, 32),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),  # depthwise
            *ConvNormAct(32, 64, 1),  # pointwise, its layers flat in this Sequential as the original's
        )
        self.siamese_out = nn.Sequential(ConvNormAct(128, 256), nn.Conv2d(256, 1, 3, padding=1, bias=False))

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk_in(torch.cat([bg, image], dim=1))
        x = x + self.trunk_res1(x)
        x = self.trunk_mid(x)
        x = x + self.trunk_res2(x)
        depth = self.trunk_out(x)
        mask = self.siamese_out(torch.cat([self.siamese(bg), self.siamese(image)], dim=1))
        return mask, depth


@register("seed-densenet", "seed preset 001: full-resolution CNN, residual trunk for depth, Siamese branch for mask")
def seed_densenet(depth_max: float = 10.0) -> SeedDenseNet:
    return SeedDenseNet(depth_max)
