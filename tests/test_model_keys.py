"""Every registered network keeps its state-dict names and shapes: checkpoints and the shipped weights name
tensors by them, so a change to models/ that renames a parameter must show here first."""

from __future__ import annotations

import hashlib

import pytest

from maskdepth.models import ALIASES, create_model, list_models
from maskdepth.models.registry import _entry

# sha256 of "key:shape key:shape ..." in state-dict order (first 16 hex digits), number of tensors
KEYS = {
    "maskdepth": ("b0031164f0d2e8a6", 166),
    "maskdepth-siamese": ("efe60c8409ebc589", 180),
    "maskdepth-small": ("68ec8bd1dbca0327", 154),
    "maskdepth-large": ("376dcc47b76b3eec", 214),
    "seed-resnet-twobranch": ("bc79eaf319a5cec4", 124),
    "seed-densenet": ("53dd7bbbddb4c41d", 69),
    "seed-resunet": ("d1fdfcee7fac715c", 232),
    "seed-dilated-pixelshuffle": ("b983d190d5dd9183", 75),
    "seed-updown": ("c86d45fbbdcc2ee6", 142),
}


def test_every_model_is_pinned():
    assert list(KEYS) == list_models()


@pytest.mark.parametrize("name", list(KEYS))
def test_state_dict_names_and_shapes_are_unchanged(name):
    sd = create_model(name).state_dict()
    text = " ".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert (hashlib.sha256(text.encode()).hexdigest()[:16], len(sd)) == KEYS[name]


def test_aliases_and_init_only_arguments_come_from_the_model_modules():
    assert ALIASES == {"default": "maskdepth"}
    assert _entry("seed-resunet").init_only == {"encoder_weights"}
    assert "encoder_weights" not in create_model("seed-resunet").model_kwargs
    assert create_model("default").model_name == "maskdepth"
