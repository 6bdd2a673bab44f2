"""`seed-updown`: seed preset 004, a down/up-sampling (UNet) depth network beside a simple mask network
(3,631,616 parameters).

The document gives: 3,631,616 parameters in one architecture with two outputs; "Upsampling and Downsampling model
for Depth and Simple model architecture for Mask" (mask being the easy task); inputs bg and fg_bg; trained at
64x64 (first 160x160); larger 30-40M models were tried and dropped.

Inferred (the model code is not in the document): both parts read the 6-channel (bg, image) stack. Depth is a
UNet: double 3x3 conv-BN-ReLU blocks 6->32, then max-pool + double conv to 64, 128, 256 and 256 (1/16); bilinear
x2 upsampling, concatenation with the encoder skip and a double conv back up through 128, 64, 32, 32; a 1x1
conv to one channel. Mask is a plain stack of full-resolution 3x3 conv-BN-ReLU layers 6->32->64->128->128->32
and a 3x3 conv to one channel. That lands at 3,630,402 parameters (-0.03%).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskdepth.models.base import MaskDepthNet
from maskdepth.models.blocks import ConvNormAct
from maskdepth.models.registry import register


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(ConvNormAct(cin, cout), ConvNormAct(cout, cout))


class SeedUpDown(MaskDepthNet):
    stride = 16

    def __init__(self, depth_max: float = 10.0):
        super().__init__(depth_max)
        self.down = nn.ModuleList([_double(6, 32), _double(32, 64), _double(64, 128), _double(128, 256),
                                   _double(256, 256)])
        self.up = nn.ModuleList([_double(512, 128), _double(256, 64), _double(128, 32), _double(64, 32)])
        self.depth_out = nn.Conv2d(32, 1, 1)
        self.mask_net = nn.Sequential(ConvNormAct(6, 32), ConvNormAct(32, 64), ConvNormAct(64, 128),
                                      ConvNormAct(128, 128), ConvNormAct(128, 32), nn.Conv2d(32, 1, 3, padding=1))

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([bg, image], dim=1)
        mask = self.mask_net(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, x], dim=1))
        return mask, self.depth_out(x)


@register("seed-updown", "seed preset 004: UNet (down/up-sampling) for depth beside a plain full-resolution CNN for mask")
def seed_updown(depth_max: float = 10.0) -> SeedUpDown:
    return SeedUpDown(depth_max)
