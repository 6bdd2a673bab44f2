"""The demo runs every step end to end and writes a report that links only files it made."""

import re

from maskdepth.demo import DemoConfig, run_demo


def test_demo_end_to_end_writes_report(tmp_path):
    cfg = DemoConfig(size=32, backgrounds=4, foregrounds=3, per_pair=2, steps=3, batch_size=4, pairs=2)
    report = run_demo(tmp_path / "demo", cfg, workers=1)
    page = report.read_text()
    assert "mask_iou" in page and "depth_delta1" in page
    links = re.findall(r"src=['\"]([^'\"]+)['\"]", page)
    assert len(links) >= 2 * 7 + 1
    for link in links:
        assert (report.parent / link).is_file(), link
    # a rerun replaces the earlier demo instead of refusing
    run_demo(tmp_path / "demo", cfg, workers=1)
