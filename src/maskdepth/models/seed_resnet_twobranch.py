"""`seed-resnet-twobranch`: seed preset 000, a two-branch ResNet with transposed-conv heads (3,199,552 parameters).

The document gives: 3,199,552 parameters, "based on RESNET architecture", trained at 64x64, and this table:
image prep 3->32, background prep 3->32; ResNet block 1 (image) 32->64, ResNet block 2 (image) 64->128;
sequential block 1 (background) 32->64, sequential block 2 (background) 64->128; concatenation 128*2 = 256;
mask head 256->1, depth head 256->1. So: separate branches for image and background, late fusion by concatenation,
two heads.

Inferred (the code was not published with the document): the blocks are the course-standard ResNet layer
"X = conv3x3 -> maxpool -> BN -> ReLU; out = X + (conv-BN-ReLU x2)(X)", the background's sequential blocks are
the same without the residual, so the fused features sit at 1/4; each head brings them back to full size with a
3x3 conv at 256, two stride-2 transposed convs (256->128->64, kernel 4) and two 3x3 convs at 64 before the 1-channel
output conv. That lands at 3,197,634 parameters (-0.06%).
"""

from __future__ import annotations

import torch
from torch import nn

from maskdepth.models.base import MaskDepthNet
from maskdepth.models.blocks import ConvNormAct
from maskdepth.models.registry import register


def _conv_pool_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _ResLayer(nn.Module):
    """X = conv -> pool -> BN -> ReLU; out = X + R(X) with R two conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.x = _conv_pool_bn_relu(cin, cout)
        self.r = nn.Sequential(ConvNormAct(cout, cout), ConvNormAct(cout, cout))

    def forward(self, x):
        x = self.x(x)
        return x + self.r(x)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _head() -> nn.Sequential:
    return nn.Sequential(ConvNormAct(256, 256), _up(256, 128), _up(128, 64), ConvNormAct(64, 64),
                         ConvNormAct(64, 64), nn.Conv2d(64, 1, 3, padding=1))


class SeedResNetTwoBranch(MaskDepthNet):
    stride = 4

    def __init__(self, depth_max: float = 10.0):
        super().__init__(depth_max)
        self.image_prep = ConvNormAct(3, 32)
        self.bg_prep = ConvNormAct(3, 32)
        self.image_blocks = nn.Sequential(_ResLayer(32, 64), _ResLayer(64, 128))
        self.bg_blocks = nn.Sequential(_conv_pool_bn_relu(32, 64), _conv_pool_bn_relu(64, 128))
        self.mask_head = _head()
        self.depth_head = _head()

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.image_blocks(self.image_prep(image)), self.bg_blocks(self.bg_prep(bg))], dim=1)
        return self.mask_head(x), self.depth_head(x)


@register("seed-resnet-twobranch", "seed preset 000: image ResNet branch + background conv branch, concat at 1/4, "
                                   "transposed-conv heads")
def seed_resnet_twobranch(depth_max: float = 10.0) -> SeedResNetTwoBranch:
    return SeedResNetTwoBranch(depth_max)
