"""The weights shipped in the package load and reproduce their card on a freshly generated test set."""

import json
from pathlib import Path

import pytest

from conftest import load_script
from maskdepth.checkpoint import DEFAULT_CARD, DEFAULT_WEIGHTS, packaged_file
from maskdepth.evaluate import evaluate_checkpoint

WEIGHTS = packaged_file(DEFAULT_WEIGHTS)
CARD = packaged_file(DEFAULT_CARD)


def test_default_weights_are_shipped_with_a_card():
    assert WEIGHTS.is_file() and CARD.is_file()
    card = json.loads(CARD.read_text())
    assert WEIGHTS.stat().st_size <= 20e6
    for key in ("data", "recipe", "evaluation", "date", "machine"):
        assert card[key]


def test_default_weights_reach_their_card(tmp_path):
    import maskdepth

    predictor = maskdepth.load_model()
    assert predictor.card["model"] == predictor.model_name
    mod = load_script("package_default_weights")
    card = json.loads(CARD.read_text())
    assert card["evaluation"]["dataset"] == mod.CARD_EVAL
    data = mod.make_card_dataset(tmp_path / "card")
    record, _ = evaluate_checkpoint(Path(str(WEIGHTS)), data, "test", size=mod.CARD_EVAL["size"], workers=1,
                                    progress=False)
    for name in ("mask_iou", "depth_delta1"):
        assert record["metrics"][name] == pytest.approx(card["evaluation"]["metrics"][name], abs=0.02), name


def test_card_recipe_counts_every_stage_of_its_command():
    mod = load_script("package_default_weights")
    two = ("maskdepth train --config default-weights-native --out runs/native; "
           "maskdepth train --config default-weights-registered --out runs/registered")
    assert mod._chain_steps(two) == {"stages": 2, "total_steps": 6000 + 4000}
    assert mod._chain_steps("maskdepth train --config no-such-stage --out x") == {}
    # as the CLI reads them: the = form, a --steps override, a resumed run, other commands
    three = ("maskdepth train --config=default-weights-native --out a; python scripts/reestimate_bn.py a b; "
             "maskdepth train --config default-weights-registered --steps 500 --out c; maskdepth train --resume c")
    assert mod._chain_steps(three) == {"stages": 2, "total_steps": 6000 + 500}
