"""The one block vocabulary of the networks (timm-style): a norm by name, conv-norm-act, the ResNet basic block.

Blocks keep the parameter names the networks had before they shared them (ConvNormAct is a Sequential: conv at
"0", norm at "1"), so shipped weights and checkpoints load as they are.
"""

from __future__ import annotations

import math

from torch import nn

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """"batch": BatchNorm2d; "group": GroupNorm with up to 8 groups (batch-independent in training too)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ConvNormAct(nn.Sequential):
    """k x k convolution (no bias: the norm has one), norm, ReLU; 'same' padding for odd k. `act=False` leaves the
    ReLU out; `act_first` puts it between conv and norm (seed preset 003's order)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, norm: str = "batch",
                 act: bool = True, act_first: bool = False):
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=False)
        layers = [conv, norm_layer(norm, cout)] + ([nn.ReLU(inplace=True)] if act else [])
        if act and act_first:
            layers = [layers[0], layers[2], layers[1]]
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity or 1x1 projection); torchvision's parameter names, so
    ResNet18 weights load as they are."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)
