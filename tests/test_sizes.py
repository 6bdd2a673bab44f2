"""The one "N" / "HxW" size reading, and that every command that takes a size answers bad text in one line."""

from __future__ import annotations

import pytest

from maskdepth.cli import main
from maskdepth.errors import UserError
from maskdepth.sizes import parse_size


def test_parse_size_reads_square_and_hxw():
    assert parse_size("64") == (64, 64)
    assert parse_size("24x40") == (24, 40)
    assert parse_size(" 24 X 40 ") == (24, 40)


@pytest.mark.parametrize("text", ["axb", "", "24x", "x40", "1x2x3", "-5", "0x8", "2.5"])
def test_parse_size_refuses_anything_else(text):
    with pytest.raises(UserError, match="--size"):
        parse_size(text)


def test_parse_size_minimum_names_the_flag():
    with pytest.raises(UserError, match=r"^--sizes 4x64: .*at least 8$"):
        parse_size("4x64", "--sizes", minimum=8)
    assert parse_size("8x64", minimum=8) == (8, 64)


@pytest.mark.parametrize("argv", [
    ["data", "make", "{tmp}/d", "--size", "12x"],
    ["data", "import", "{tmp}/src", "{tmp}/d", "--size", "4"],
    ["bench-infer", "--model", "maskdepth-small", "--sizes", "axb"],
])
def test_cli_size_errors_are_one_line(argv, tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a size" in err[0], err
    assert not (tmp_path / "d").exists()
