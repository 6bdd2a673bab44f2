"""What every maskdepth network shares: input normalisation, padding to the stride, the bounded depth output.

A network subclasses `MaskDepthNet`, sets `stride` (the multiple its input sides must be) and implements
`logits(bg, image) -> (mask_logits, depth_logits)` on normalised, padded inputs. `forward` does the rest, so
every model takes RGB in [0, 1] at any H, W and gives (N,1,H,W) outputs with depth in (0, depth_max).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics: fixed constants inside the model, so a checkpoint needs nothing from outside. They also
# suit user-supplied ImageNet encoder weights (seed-resunet).
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


class MaskDepthNet(nn.Module):
    """Base of all registered networks. `model_name` / `model_kwargs` are set by `create_model`."""

    stride: int = 1

    def __init__(self, depth_max: float = 10.0):
        super().__init__()
        if not depth_max > 0:
            raise ValueError(f"depth_max must be > 0, got {depth_max}")
        self.depth_max = float(depth_max)
        self.model_name = type(self).__name__
        self.model_kwargs: dict = {}
        # not persistent: constants, not weights; checkpoints stay free of them
        self.register_buffer("rgb_mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(RGB_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - self.rgb_mean) / self.rgb_std

    def logits(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask_logits, depth_logits) from normalised, stride-padded inputs. Subclasses implement it."""
        raise NotImplementedError

    def forward(self, bg: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = image.shape[-2:]
        bg = self.normalize(pad_to_multiple(bg, self.stride))
        image = self.normalize(pad_to_multiple(image, self.stride))
        mask_logits, depth_logits = self.logits(bg, image)
        # float32 outputs even under bf16 autocast: the sigmoid and scaling add no bf16 rounding (~depth_max/256)
        mask_logits = mask_logits[..., :h, :w].float()
        depth = self.depth_max * torch.sigmoid(depth_logits[..., :h, :w].float())
        return mask_logits, depth


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right so both sides are multiples of `multiple`.

    The amounts come from the traced shape, so ONNX export keeps H and W dynamic and torch.compile sees no
    data-dependent branch (a zero pad is a no-op, not a skipped op).
    """
    if multiple == 1:
        return x
    h, w = x.shape[-2:]
    return F.pad(x, (0, (multiple - w % multiple) % multiple, 0, (multiple - h % multiple) % multiple),
                 mode="replicate")
