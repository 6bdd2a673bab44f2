"""`seed-resunet`: seed preset 002, a ResNet18-encoder UNet with separate mask and depth decoders (~16M parameters).

The document gives: "Pre-trained ResNet18 with first and last layer removed" as the encoder; two decoder branches
(mask, depth), each "[2, 2, 2, 2] block similar to ResNet18", each block with a skip connection to the
corresponding encoder block, "each unit performs 2 convolution and bilinear interpolation"; 16 million
parameters in total; inputs 160x160 bg and fg_bg.

Inferred: "first layer removed" = the 3-channel stem conv is replaced by a 7x7 stride-2 conv on the 6-channel
(bg, image) stack; "last layer" = the classifier. Each decoder mirrors the four encoder stages with one unit per
stage: conv 3x3 (to the skip's width) -> bilinear x2 -> add the encoder skip -> conv 3x3 (512->256 meeting layer3,
256->128 meeting layer2, 128->64 meeting layer1, 64->64 meeting the stem at 1/2), then bilinear x2 to full size,
conv 64->32 and the 1-channel output conv. Two units per stage at these widths would give ~19M, beyond the
document's 16M; one gives 16,019,906 (+0.12%).

No pretrained weights are downloaded: the encoder starts random. `encoder_weights=PATH` loads a torchvision-
layout ResNet18 state dict (.safetensors, or .pt/.pth read with weights_only) that the user supplies; its 3-channel
stem is split over the bg and image halves of ours (each half 0.5x) and `fc.*` is ignored. The path is not kept in
`model_kwargs`: a checkpoint holds the trained weights.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from maskdepth.errors import UserError
from maskdepth.fileio import require_file
from maskdepth.models.base import MaskDepthNet
from maskdepth.models.blocks import BasicBlock, ConvNormAct
from maskdepth.models.registry import register


class ResNet18Encoder(nn.Module):
    """ResNet18 without the classifier, on `in_channels` inputs; torchvision's parameter names."""

    def __init__(self, in_channels: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [64, 64, 128, 256, 512]
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(widths[i - 1], widths[i], stride), BasicBlock(widths[i], widths[i]))
            setattr(self, f"layer{i}", layer)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at 1/2 (stem), 1/4, 1/8, 1/16, 1/32."""
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3, self.layer4(f3)]


class _UpUnit(nn.Module):
    """conv -> bilinear x2 -> + skip -> conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.reduce = ConvNormAct(cin, cout)
        self.fuse = ConvNormAct(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.fuse(x + skip)


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.units = nn.ModuleList([_UpUnit(512, 256), _UpUnit(256, 128), _UpUnit(128, 64), _UpUnit(64, 64)])
        self.head = nn.Sequential(ConvNormAct(64, 32), nn.Conv2d(32, 1, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for unit, skip in zip(self.units, reversed(feats[:-1])):
            x = unit(x, skip)
        return self.head(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class SeedResUNet(MaskDepthNet):
    stride = 32

    def __init__(self, depth_max: float = 10.0, encoder_weights: str | os.PathLike | None = None):
        super().__init__(depth_max)
        self.encoder = ResNet18Encoder(6)
        self.mask_decoder = _Decoder()
        self.depth_decoder = _Decoder()
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(torch.cat([bg, image], dim=1))
        return self.mask_decoder(feats), self.depth_decoder(feats)


def load_encoder_weights(encoder: ResNet18Encoder, path: str | os.PathLike) -> None:
    """Load a user's ResNet18 state dict (torchvision names, optional `module.`/`encoder.`/`backbone.` prefix)."""
    path = require_file(path, "encoder weights file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable or unsafe file: one line, not a deep traceback
        raise UserError(f"{path}: cannot read encoder weights ({type(e).__name__}); give a ResNet18 state dict "
                        "as .safetensors or a weights-only .pt/.pth") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds no state dict; give a ResNet18 state dict")
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("fc."):
            clean[key] = value
    stem = clean.get("conv1.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 3:
        clean["conv1.weight"] = torch.cat([stem, stem], dim=1) * 0.5  # same response to bg and image halves
    own = encoder.state_dict()
    wrong = [k for k, v in clean.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in clean]
    if wrong or missing:
        first = (wrong or missing)[0]
        raise UserError(f"{path}: not a ResNet18 state dict ({len(missing)} tensors missing, {len(wrong)} of the "
                        f"wrong shape, e.g. '{first}'); give torchvision-layout ResNet18 weights")
    encoder.load_state_dict({k: clean[k] for k in own})


@register("seed-resunet", "seed preset 002: ResNet18-encoder UNet, separate mask and depth decoders, bilinear "
                          "upsampling; encoder_weights=PATH loads your ResNet18 weights",
          init_only=("encoder_weights",))
def seed_resunet(depth_max: float = 10.0, encoder_weights: str | None = None) -> SeedResUNet:
    return SeedResUNet(depth_max, encoder_weights)
