"""The default network (`maskdepth`, alias `default`), built to beat the seed presets on quality and speed.

- Early fusion: bg, image, their difference and its magnitude (12 channels) enter one encoder, so the very first
  convolution already compares the two captures (the seed presets fuse after separate branches or not at all).
- Most compute at low resolution: a patch stem (a linear 4x4 stride-4 conv, i.e. a learned space-to-depth, then a
  3x3 conv) goes straight to 1/4, then residual stages at 1/4, 1/8, 1/16, 1/32 (for four `depths`). A strided conv
  rather than pixel-unshuffle: ONNX Runtime runs the 6-D transpose of an unshuffle slower than the whole stem conv.
- Global context: the deepest features, averaged over the image, are added back everywhere, so every pixel sees
  image-wide cues (room size, camera height) that set the depth scale.
- Decoder: top-down, bilinear x2 upsampling + lateral 1x1 skips + 3x3 conv (no transposed conv, no pixel
  shuffle: no checkerboard), shared by mask and depth; a small head for each at 1/4.
- Full-resolution refinement: cheap convs (1x1 then two 3x3) on the full-size fused inputs, the upsampled coarse
  outputs and a thin upsampled feature map add a residual to the coarse logits, so edges follow the image, not
  the 1/4 grid. The 1x1 is applied without materialising that concatenation (`_refine_input`). Its last conv
  starts at zero: training begins from the smooth coarse prediction.

Comparing the two captures where a camera was nudged or the light changed (`siamese`, `tolerance`; both off in the
first designs, on in `maskdepth-siamese`):
- `siamese`: one shared patch embedding of bg and of image (the same weights, one call on both) at 1/4; their
  features and the magnitude of their difference are added to the early-fusion stem's output (a 1x1 conv and a
  norm whose scale starts at 0). Features of 4x4 patches through a 3x3 conv see about 12 px, so their
  difference tolerates a shift of a few pixels and a change of exposure that a pixel difference does not.
- `tolerance` r: a shift-tolerant pixel difference, min over offsets |dx|, |dy| <= r of max over colours
  |image(x) - bg(x + d)|, computed at 1/2 resolution (so r covers 2r px), as one more input of the stem: what
  a nudged camera changes can be explained by a small shift of bg, a foreground cannot.
Both start out as no-ops on the first design's function (the zero scale, and zero weights for the stem's new
input when grown from a checkpoint, `model.init_mode = "matching"`), so the first design's weights can initialise them.

Norm: BatchNorm by default (fast, folds into the conv for inference; in eval mode it does not depend on the batch,
so batch-1 prediction is exact; under DDP convert with SyncBatchNorm when per-GPU batches are tiny), or
GroupNorm (`norm="group"`: batch-independent in training too). ReLU, static control flow, only ops that ONNX
opset 17 exports with dynamic H and W; channels_last and bf16 autocast friendly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskdepth.models.base import MaskDepthNet
from maskdepth.models.blocks import NORMS, ConvNormAct, norm_layer
from maskdepth.models.registry import register

FUSED_CHANNELS = 12  # bg, image, image - bg, |image - bg|


class _ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = norm_layer(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, channels)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(x + self.norm2(self.conv2(y)), inplace=True)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def _tolerant_difference(bg: torch.Tensor, image: torch.Tensor, radius: int) -> torch.Tensor:
    """(N,1,H,W): min over offsets |dx|, |dy| <= radius of max over channels |image(x) - bg(x + d)|; bg's border
    repeated. Static slices only, so it exports with dynamic H and W."""
    h, w = image.shape[-2:]
    padded = F.pad(bg, (radius, radius, radius, radius), mode="replicate")
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d = (image - padded[..., dy:dy + h, dx:dx + w]).abs().amax(dim=1, keepdim=True)
            best = d if best is None else torch.minimum(best, d)
    return best


class MaskDepthModel(MaskDepthNet):
    """`width`: channels at 1/4 (doubling per stage); `depths`: residual blocks per stage (1/4, 1/8, ...)."""

    def __init__(self, width: int = 32, depths: Sequence[int] = (1, 2, 2, 1), norm: str = "batch",
                 depth_max: float = 10.0, siamese: bool = False, tolerance: int = 0):
        super().__init__(depth_max)
        depths = [int(d) for d in depths]
        if width < 8 or not 1 <= len(depths) <= 5 or min(depths) < 1:
            raise ValueError(f"need width >= 8 and 1-5 stages of >= 1 block, got width={width}, depths={depths}")
        if norm not in NORMS:
            raise ValueError(f"norm must be 'batch' or 'group', got '{norm}'")
        if not 0 <= int(tolerance) <= 4:
            raise ValueError(f"tolerance must be 0-4 (half-resolution pixels), got {tolerance}")
        self.siamese, self.tolerance = bool(siamese), int(tolerance)
        widths = [width * 2**i for i in range(len(depths))]
        dec = 2 * width  # decoder channels
        ref = max(8, width // 2)  # refinement channels at full resolution
        self.stride = 4 * 2 ** (len(depths) - 1)

        patch = 2 * width  # channels of the learned space-to-depth (an unshuffle would give 12 * 16 = 192)
        self.stem = nn.Sequential(nn.Conv2d(FUSED_CHANNELS + (1 if self.tolerance else 0), patch, 4, stride=4),
                                  ConvNormAct(patch, width, norm=norm))
        if self.siamese:
            self.embed = nn.Sequential(nn.Conv2d(3, patch, 4, stride=4), ConvNormAct(patch, width, norm=norm))
            self.merge = ConvNormAct(3 * width, width, 1, norm=norm, act=False)
            nn.init.zeros_(self.merge[1].weight)
        self.stages = nn.ModuleList()
        for i, (c, d) in enumerate(zip(widths, depths)):
            down = [ConvNormAct(widths[i - 1], c, stride=2, norm=norm)] if i else []
            self.stages.append(nn.Sequential(*down, *(_ResBlock(c, norm) for _ in range(d))))
        self.laterals = nn.ModuleList(
            ConvNormAct(c, dec, 1, norm=norm, act=False) for c in widths)
        self.smooth = nn.ModuleList(ConvNormAct(dec, dec, norm=norm) for _ in widths[:-1])
        self.mask_head = nn.Sequential(ConvNormAct(dec, dec // 2, norm=norm), nn.Conv2d(dec // 2, 1, 1))
        self.depth_head = nn.Sequential(ConvNormAct(dec, dec // 2, norm=norm), nn.Conv2d(dec // 2, 1, 1))
        self.context = nn.Conv2d(widths[-1], widths[-1], 1)
        refine_in = -(-(ref + FUSED_CHANNELS + 2) // 8) * 8
        self.refine_proj = nn.Conv2d(dec, refine_in - FUSED_CHANNELS - 2, 1)
        self.refine = nn.Sequential(
            nn.Conv2d(refine_in, ref, 1), nn.ReLU(inplace=True),
            nn.Conv2d(ref, ref, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(ref, 2, 3, padding=1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diff = image - bg
        fused = torch.cat([bg, image, diff, diff.abs()], dim=1)
        stem_in = fused
        if self.tolerance:
            tol = _tolerant_difference(F.avg_pool2d(bg, 2), F.avg_pool2d(image, 2), self.tolerance)
            stem_in = torch.cat([fused, _up(tol, 2)], dim=1)
        feats = []
        x = self.stem(stem_in)
        if self.siamese:
            fb, fi = self.embed(torch.cat([bg, image], dim=0)).chunk(2, dim=0)
            x = x + self.merge(torch.cat([x, fi, (fi - fb).abs()], dim=1))
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        feats[-1] = x + self.context(x.mean(dim=(2, 3), keepdim=True))
        top = self.laterals[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            top = self.smooth[i](_up(top, 2) + self.laterals[i](feats[i]))
        heads = torch.cat([self.mask_head(top), self.depth_head(top)], dim=1)
        out = _up(heads, 4) + self.refine[1:](self._refine_input(top, heads, fused))
        return out[:, :1], out[:, 1:]

    def _refine_input(self, top: torch.Tensor, heads: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """refine[0] (a 1x1 conv) of cat(up(refine_proj(top)), fused, up(heads)), computed without building that
        full-resolution concatenation: a 1x1 conv commutes with bilinear upsampling (whose weights sum to 1), so
        the thin and coarse parts are mixed at 1/4 and upsampled as one map. The same function of the same
        parameters; at 640x480 the concatenation and its layout changes were a fifth of the inference time."""
        w, b = self.refine[0].weight[:, :, 0, 0], self.refine[0].bias
        n_thin = self.refine_proj.out_channels
        w_thin, w_fused, w_coarse = w[:, :n_thin], w[:, n_thin:n_thin + FUSED_CHANNELS], w[:, n_thin + FUSED_CHANNELS:]
        proj = self.refine_proj.weight[:, :, 0, 0]
        low = F.conv2d(torch.cat([top, heads], dim=1), torch.cat([w_thin @ proj, w_coarse], dim=1)[..., None, None],
                       b + w_thin @ self.refine_proj.bias)
        return _up(low, 4) + F.conv2d(fused, w_fused[..., None, None])


@register("maskdepth", "default: early fusion, 1/4 patch stem, residual encoder to 1/32 with global context, "
                       "bilinear decoder, full-res refinement", aliases=("default",))
def maskdepth(width: int = 32, depths: Sequence[int] = (1, 2, 2, 1), norm: str = "batch",
              depth_max: float = 10.0) -> MaskDepthModel:
    return MaskDepthModel(width, depths, norm, depth_max)


@register("maskdepth-siamese", "default design comparing the captures shift-tolerantly: shared patch embedding "
                               "of bg and image with feature differences, tolerant pixel difference")
def maskdepth_siamese(width: int = 32, depths: Sequence[int] = (1, 2, 2, 1), norm: str = "batch",
                      depth_max: float = 10.0, siamese: bool = True, tolerance: int = 2) -> MaskDepthModel:
    return MaskDepthModel(width, depths, norm, depth_max, siamese, tolerance)


@register("maskdepth-small", "default design, narrow: for CPU training and prediction")
def maskdepth_small(width: int = 16, depths: Sequence[int] = (1, 1, 2, 1), norm: str = "batch",
                    depth_max: float = 10.0) -> MaskDepthModel:
    return MaskDepthModel(width, depths, norm, depth_max)


@register("maskdepth-large", "default design, wide and deep: for GPU training")
def maskdepth_large(width: int = 48, depths: Sequence[int] = (2, 2, 4, 2), norm: str = "batch",
                    depth_max: float = 10.0) -> MaskDepthModel:
    return MaskDepthModel(width, depths, norm, depth_max)
