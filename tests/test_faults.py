"""The fault run's fast seeded subset (benchmarks/faults.py runs the full set): `data make` and `train` killed with
SIGKILL at seeded moments, some of them inside a shard or checkpoint write, then rerun or resumed, end byte-identical to an
uninterrupted run; what a killed run leaves loads, and no temp file is left at the end."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402


def _check(records: list[dict]) -> None:
    assert records and all(r["identical"] for r in records), records
    assert not [r["tmp_left"] for r in records if r["tmp_left"]]
    assert any(not r["finished_first"] for r in records)  # the kills really interrupted something
    checks = [v for r in records for v in r.get("loadable", {}).values() if v is not None]
    assert all(v is True for v in checks), checks


def test_data_make_killed_and_rerun_gives_the_uninterrupted_bytes(tmp_path):
    records = faults.make_trials(tmp_path, moments=1, aimed=2, seed=14)
    _check(records)
    assert {r["workers"] for r in records} == {1, 2}
    aimed = [r for r in records if r["moment"] == "shard write"]
    assert aimed and all(r["tmp_seen"] for r in aimed)


def test_train_killed_even_inside_a_checkpoint_write_resumes_bit_identical(tmp_path):
    records = faults.train_trials(tmp_path, moments=1, aimed=1, seed=14)
    _check(records)
    aimed = [r for r in records if r["moment"] == "checkpoint write"]
    assert aimed and all(r["tmp_seen"] for r in aimed)
    assert all(r["same_file_bytes"] for r in records)
