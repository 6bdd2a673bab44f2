"""Config values are checked against their field's type element by element, with one line naming the key."""

from __future__ import annotations

import pytest

from maskdepth.errors import UserError
from maskdepth.train.config import _describe, _fits, from_dict, load_config

DATA = {"data": {"generator": "procedural"}}


@pytest.mark.parametrize("section, key, value, expected", [
    ("augment", "crop_scale", ["a", "b"], "a list of 2 numbers"),
    ("augment", "crop_scale", [0.5], "a list of 2 numbers"),
    ("augment", "crop_scale", [0.5, 1.0, 1.0], "a list of 2 numbers"),
    ("capture", "exposure", 0.8, "a list of 2 numbers"),
    ("train", "resize", [[96, "3"]], "a list of lists of integers"),
    ("train", "resize", [96, 3], "a list of lists of integers"),
    ("train", "resize", [[96, 1.5]], "a list of lists of integers"),
    ("optim", "betas", [0.9, True], "a list of numbers"),
    ("train", "epochs", 2.0, "an integer"),
    ("train", "amp", 1, "true or false"),
    ("model", "kwargs", [1], "a table"),
    ("data", "dir", 3, "a string"),
])
def test_a_wrong_element_is_one_line_naming_key_value_and_type(section, key, value, expected):
    raw = {"data": {"generator": "procedural"}}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(UserError) as e:
        from_dict(raw)
    assert str(e.value) == f"[{section}] {key} = {value!r}: expected {expected}"


def test_well_typed_values_pass_unchanged():
    c = from_dict({**DATA, "train": {"resize": [[96, 3], [128, 1, 8]]}, "augment": {"crop_scale": [1, 1]},
                   "optim": {"lr": 1, "betas": [0.9, 1]}, "model": {"kwargs": {"width": 8, "mode": "x"}}})
    assert c.train.resize == [[96, 3], [128, 1, 8]]
    assert c.augment["crop_scale"] == [1, 1]
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.model.kwargs == {"width": 8, "mode": "x"}


def test_set_overrides_are_checked_the_same_way():
    with pytest.raises(UserError, match=r"^\[augment\] crop_scale = \['a', 'b'\]: expected a list of 2 numbers$"):
        load_config(None, sets=['augment.crop_scale=["a", "b"]'], overrides={"data.generator": "procedural"})


def test_unions_with_none_and_open_tuples():
    assert _fits(None, str | None) and _fits("x", str | None) and not _fits(3, str | None)
    assert _describe(str | None) == "a string or none"
    assert _fits([1, 2, 3], tuple[int, ...]) and not _fits([1, "2"], tuple[int, ...])
    assert _fits([[1, None]], list[list[int | None]]) and not _fits([[1, "a"]], list[list[int | None]])
    assert _describe(tuple[int, str]) == "a list of an integer, a string"


def test_shipped_configs_are_found_by_name_and_paths_still_work(tmp_path):
    from maskdepth.train.config import find_config, shipped_configs

    names = shipped_configs()
    assert {"cpu-quick", "gpu", "finetune", "default-weights"} <= set(names)
    for name in names:
        assert load_config(name, ["data.dir=x"]) == load_config(f"{name}.toml", ["data.dir=x"])
    assert find_config("configs/cpu-quick.toml") == find_config("cpu-quick")  # the repository's former path
    mine = tmp_path / "cpu-quick.toml"
    mine.write_text("[train]\nepochs = 7\n")
    assert load_config(mine, ["data.dir=x"]).train.epochs == 7  # a file is taken before a shipped name


def test_an_unknown_config_name_is_one_line_listing_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match=r"^nosuch: no such config file .* cpu-quick, ") as e:
        load_config("nosuch")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_a_config_builds_on_its_base_key_by_key(tmp_path):
    (tmp_path / "parent.toml").write_text('base = "cpu-quick"\n[optim]\nlr = 0.5\n[train]\nsteps = 7\n')
    (tmp_path / "child.toml").write_text('base = "parent.toml"\n[train]\nsteps = 9\n')
    quick, child = load_config("cpu-quick"), load_config(tmp_path / "child.toml")
    assert child.train.steps == 9 and child.optim.lr == 0.5  # its own key, then its parent's
    assert child.train.batch_size == quick.train.batch_size and child.data == quick.data  # the rest: the shipped one


def test_a_shipped_stage_config_resolves_to_every_key_of_its_chain():
    silog, thin = load_config("default-weights-silog"), load_config("default-weights-thin")
    assert silog.loss.depth_silog == 0.25 and silog.loss.mask_thin == thin.loss.mask_thin == 0.25
    assert silog.train.resize == thin.train.resize and silog.capture == thin.capture


@pytest.mark.parametrize("text, expected", [
    ('base = "loop.toml"\n', "lead back to itself"),
    ('base = "nowhere.toml"\n', "no such config file"),
    ("base = 3\n", "give the config this one builds on"),
])
def test_a_bad_base_is_one_line(tmp_path, text, expected):
    (tmp_path / "loop.toml").write_text(text)
    with pytest.raises(UserError, match=expected) as e:
        load_config(tmp_path / "loop.toml")
    assert "\n" not in str(e.value)
