"""The real-photo benchmark's parts on synthetic pictures: capture conditions, the differencing baseline's best
threshold, and scoring through the project's metrics (the real photos themselves are never needed here)."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from maskdepth.realbench import (
    CONDITIONS,
    MaskScore,
    Pair,
    WorstCases,
    apply_condition,
    best_threshold,
    conditioned_pairs,
    difference_score,
)
from maskdepth.viz import LABEL_H


def _pair(seed=0, size=48):
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = bg.copy()
    mask = np.zeros((size, size), np.float32)
    mask[10:30, 15:35] = 1
    image[mask > 0] = 255 - image[mask > 0]
    return Pair(bg=bg, image=image, mask=mask)


def test_conditions_are_seeded_and_differ():
    pairs = [_pair(i) for i in range(3)]
    for cond in CONDITIONS:
        a = list(conditioned_pairs(pairs, cond, seed=1))
        b = list(conditioned_pairs(pairs, cond, seed=1))
        assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    aligned = list(conditioned_pairs(pairs, "aligned"))
    shifted = list(conditioned_pairs(pairs, "shifted"))
    # the nudged camera moves the bg far more than re-exposure and noise do

    def err(got):
        return np.mean([np.abs(g[0].astype(float) - p.bg).mean() for g, p in zip(got, pairs)])

    assert err(shifted) > 3 * err(aligned)
    with pytest.raises(ValueError):
        apply_condition(pairs[0], "nope", np.random.default_rng(0))


def test_jpeg_condition_touches_both_pictures():
    pair = _pair()
    bg, image = apply_condition(pair, "jpeg", np.random.default_rng(0))
    assert not np.array_equal(image, pair.image)
    assert bg.shape == image.shape == pair.image.shape and bg.dtype == np.uint8


def test_best_threshold_separates_and_scores_perfectly():
    mask = np.zeros((20, 20), np.float32)
    mask[5:10, 5:10] = 1
    score = np.where(mask > 0, 90, 20).astype(np.uint8)
    t = best_threshold([score], [mask])
    assert 20 < t <= 90
    s = MaskScore()
    s.add((score >= t).astype(np.float32), mask)
    assert s.result()["mask_iou"] == 1.0


def test_difference_score_is_max_over_channels():
    bg = np.zeros((2, 2, 3), np.uint8)
    image = bg.copy()
    image[0, 0] = (10, 200, 30)
    assert difference_score(bg, image)[0, 0] == 200 and difference_score(image, bg)[0, 0] == 200


def test_registration_undoes_the_shifted_condition_for_the_baseline():
    """differencing after align.py's registration comes close to the aligned case when the bg was nudged."""
    from maskdepth.realbench import registered_bgs

    rng = np.random.default_rng(5)
    # a smooth random scene: registration needs texture that varies over more than a pixel
    base = rng.uniform(0, 255, (12, 12, 3))
    blocks = Image.fromarray(np.kron(base, np.ones((8, 8, 1))).astype(np.uint8))
    scene = np.asarray(blocks.filter(ImageFilter.GaussianBlur(2)))
    image = scene.copy()
    image[30:60, 30:60] = [250, 20, 20]
    mask = np.zeros(scene.shape[:2], np.float32)
    mask[30:60, 30:60] = 1
    pair = Pair(bg=scene, image=image, mask=mask)
    bg, im = apply_condition(pair, "shifted", np.random.default_rng(0))
    (reg,) = registered_bgs([bg], [im])
    keep = mask == 0
    keep[:4], keep[-4:], keep[:, :4], keep[:, -4:] = False, False, False, False
    before = difference_score(bg, im)[keep].mean()
    after = difference_score(reg, im)[keep].mean()
    assert after < 0.5 * before


def test_recall_is_counted_per_contrast_bucket():
    bg = np.full((20, 20, 3), 200, np.uint8)
    image = bg.copy()
    mask = np.zeros((20, 20), np.float32)
    mask[2:10, 2:10] = 1
    image[2:6, 2:10] = 20  # dark clothes in front of a bright wall
    image[6:10, 2:10] = (230, 170, 200)  # another colour, the wall's brightness
    buckets = Pair(bg=bg, image=image, mask=mask).contrast
    assert buckets["dark_on_brighter"].sum() == 32 and buckets["same_brightness"].sum() == 32
    prob = np.zeros((20, 20), np.float32)
    prob[2:6, 2:10] = 0.9  # found the dark part only
    s = MaskScore()
    s.add(prob, mask, buckets)
    r = s.result()
    assert r["recall_dark_on_brighter"] == 1.0 and r["recall_same_brightness"] == 0.0 and r["mask_recall"] == 0.5


def test_worst_cases_keep_the_lowest_iou_and_draw_them():
    worst = WorstCases(2)
    mask = _pair().mask
    for found_rows in (20, 5, 15, 10):  # the true box has 20 rows: IoU 1, 0.25, 0.75, 0.5
        prob = np.zeros_like(mask)
        prob[10:10 + found_rows, 15:35] = 1
        worst.add(_pair().bg, _pair().image, mask, prob)
    assert [round(c[0], 2) for c in worst.cases] == [0.25, 0.5]
    picture = worst.picture()
    assert picture.shape[2] == 3 and 5 * 48 < picture.shape[1] < 5 * 48 + 20  # five columns
    assert 2 * 48 < picture.shape[0] < 2 * 48 + 30  # two rows under the labels
    top = LABEL_H + 2 + 2  # viz.make_grid: the labels, then a 2-px pad around every 48-px tile
    model_tile = picture[top:top + 48, 2 + 3 * 50: 2 + 3 * 50 + 48]  # the first row's model column
    assert (model_tile[..., 0] > 127).sum() == 5 * 20  # the worst case (5 rows of 20 found) is drawn first
