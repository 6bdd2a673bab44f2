"""Networks: a registry (name -> builder), the five seed presets (the seed projects' networks) and the default model.

Every model is `forward(bg, image) -> (mask_logits, depth)`, both (N,1,H,W) at the input's size, inputs RGB in
[0, 1], depth in (0, depth_max). `create_model(name, **kw)` builds one; `list_models()` names them.
"""

from maskdepth.models.base import MaskDepthNet
from maskdepth.models.registry import ALIASES, canonical_name, create_model, list_models, model_summary

# Importing the modules registers their models; the default first, then the seed presets in document order.
from maskdepth.models import maskdepth_net  # noqa: E402,F401  isort: skip
from maskdepth.models import seed_resnet_twobranch  # noqa: E402,F401  isort: skip
from maskdepth.models import seed_densenet  # noqa: E402,F401  isort: skip
from maskdepth.models import seed_resunet  # noqa: E402,F401  isort: skip
from maskdepth.models import seed_dilated_pixelshuffle  # noqa: E402,F401  isort: skip
from maskdepth.models import seed_updown  # noqa: E402,F401  isort: skip

__all__ = ["ALIASES", "MaskDepthNet", "canonical_name", "create_model", "list_models", "model_summary"]
