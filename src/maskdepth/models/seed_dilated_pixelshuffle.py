"""`seed-dilated-pixelshuffle`: seed preset 003, dilated-conv encoder, pointwise conv + pixel-shuffle decoders
(5,230,720 parameters).

The document gives: 5,230,720 parameters; 4 encoder blocks, each a 3x3 conv and a 3x3 dilated conv whose outputs
are concatenated and halved again by a 1x1 pointwise conv; 4 decoder blocks per head (mask, depth), each a
pointwise conv doubling the channels followed by pixel shuffle x2; trained progressively at 64, 112 and 192; its
own observation that depth "suffers from checkerboard issue"; and a link to depthmasknet.py, whose layers we
rebuild exactly: bg and image each through conv 3->32 (BN, ReLU), concatenated and reduced by a 1x1 conv to 32;
encoder blocks 32->64->128->256->512, each followed by 2x2 max pooling (1/16 at the bottleneck); decoders
512->256->128->64->32 (1x1 conv to 2C, then pixel shuffle), no nonlinearity or skip in the decoder; a 3x3 conv
32->1 per head. Counts match the document: 5,230,720.
"""

from __future__ import annotations

import torch
from torch import nn

from maskdepth.models.base import MaskDepthNet
from maskdepth.models.blocks import ConvNormAct
from maskdepth.models.registry import register


class _NormalDilated(nn.Module):
    """3x3 conv and 3x3 dilation-2 conv side by side, concatenated, 1x1 conv back to `cout`."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.normal = ConvNormAct(cin, cout)
        self.dilated = ConvNormAct(cin, cout, dilation=2, act_first=True)  # the original: conv -> ReLU -> BN
        self.pointwise = nn.Conv2d(2 * cout, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(torch.cat([self.normal(x), self.dilated(x)], dim=1))


def _decoder() -> nn.Sequential:
    ups = []
    for c in (512, 256, 128, 64):
        ups += [nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)]
    return nn.Sequential(*ups, nn.Conv2d(32, 1, 3, padding=1, bias=False))


class SeedDilatedPixelShuffle(MaskDepthNet):
    stride = 16

    def __init__(self, depth_max: float = 10.0):
        super().__init__(depth_max)
        self.bg_in = ConvNormAct(3, 32)
        self.image_in = ConvNormAct(3, 32)
        self.merge = nn.Conv2d(64, 32, 1, bias=False)
        blocks = []
        for cin, cout in ((32, 64), (64, 128), (128, 256), (256, 512)):
            blocks += [_NormalDilated(cin, cout), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*blocks)
        self.mask_decoder = _decoder()
        self.depth_decoder = _decoder()

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(self.merge(torch.cat([self.bg_in(bg), self.image_in(image)], dim=1)))
        return self.mask_decoder(x), self.depth_decoder(x)


@register("seed-dilated-pixelshuffle", "seed preset 003: normal + dilated conv encoder to 1/16, pointwise conv + "
                                       "pixel-shuffle decoders")
def seed_dilated_pixelshuffle(depth_max: float = 10.0) -> SeedDilatedPixelShuffle:
    return SeedDilatedPixelShuffle(depth_max)
