"""HPatches metrics: golden parity with the original code and hand-computed cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from kp2d.eval.hpatches import summarize
from kp2d.eval.metrics import (
    corner_error,
    evaluate_pair,
    homography_correctness,
    inside_image,
    matching_score,
    nearest_distances,
    repeatability,
    select_k_best,
)

GOLDEN_CASES = 7


# --- hand-computed cases --------------------------------------------------------------------------

SHAPE = (100, 80)  # (W, H)
TRANSLATION = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])


def _rows(points, scores=None):
    points = np.asarray(points, dtype=np.float32)
    scores = np.linspace(0.9, 0.5, len(points)) if scores is None else scores
    return np.concatenate([points, np.asarray(scores, np.float32)[:, None]], axis=1).astype(np.float32)


def _one_hot(indices, dim=8):
    return np.eye(dim, dtype=np.float32)[indices]


def _translation_case():
    """Image 1 → 2 is a shift by (10, 5) in a 100x80 image.

    Image 1: a→(20,15), b→(60,45) inside; c→(100,75), d→(105,25) fall outside image 2.
    Image 2: a'=(20,15) exact, b'=(61,45) 1 px off, e=(30,30) unmatched (back-warp (20,25) inside),
    f=(5,3) whose back-warp (-5,-2) is outside image 1. Descriptors pair a-a', b-b', c-e, d-f.
    """
    prob1 = _rows([(10, 10), (50, 40), (90, 70), (95, 20)])
    prob2 = _rows([(20, 15), (61, 45), (30, 30), (5, 3)])
    return prob1, _one_hot([0, 1, 2, 3]), prob2, _one_hot([0, 1, 2, 3])


def test_repeatability_translation_by_hand():
    prob1, _, prob2, _ = _translation_case()
    n1, n2, rep, loc = repeatability(prob1, prob2, TRANSLATION, SHAPE, top_k=300)
    # N1 = {a, b}, N2 = {a', b', e}; a-a' 0 px, b-b' 1 px in both directions, e has nothing within 3 px
    assert (n1, n2) == (2, 3)
    assert rep == 4 / 5
    assert loc == pytest.approx((0 + 1 + 0 + 1) / 4)


def test_nearest_distances_translation_by_hand():
    """The distances behind repeatability, in the protocol's (ascending score) order."""
    prob1, _, prob2, _ = _translation_case()
    nearest1, nearest2 = nearest_distances(prob1, prob2, TRANSLATION, SHAPE, top_k=300)
    # kept image-1 points warped: b (60, 45), a (20, 15); kept image-2 points: e, b', a'
    np.testing.assert_allclose(nearest1, [1.0, 0.0])
    np.testing.assert_allclose(nearest2, [math.hypot(30 - 20, 30 - 15), 1.0, 0.0])
    empty1, empty2 = nearest_distances(prob1[:0], prob2, TRANSLATION, SHAPE, top_k=300)
    assert len(empty1) == 0 and len(empty2) == 3 and np.isinf(empty2).all()  # no counterpart: never repeated


def test_repeatability_top_k_keeps_highest_scores():
    prob1, _, prob2, _ = _translation_case()
    n1, n2, rep, loc = repeatability(prob1, prob2, TRANSLATION, SHAPE, top_k=1)
    # top 1 of the kept points: a (score 0.9) and a' (score 0.9)
    assert (n1, n2, rep, loc) == (1, 1, 1.0, 0.0)


def test_matching_score_translation_by_hand():
    prob1, desc1, prob2, desc2 = _translation_case()
    # 1→2: a-a' correct, b-b' correct, c-e visible but wrong, d-f not visible → 2/3
    # 2→1: a'-a, b'-b correct; e-c lands at (100, 75), x > W-1: not visible; f-d not visible → 2/2
    score = matching_score(prob1, desc1, prob2, desc2, TRANSLATION, SHAPE, top_k=300)
    assert score == pytest.approx((2 / 3 + 1) / 2)


def test_identity_with_identical_points():
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0], [SHAPE[0] - 1, SHAPE[1] - 1], size=(40, 2))
    prob = _rows(points, rng.uniform(0.1, 1.0, 40))
    desc = rng.normal(size=(40, 32)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    result = evaluate_pair(prob, desc, prob, desc, np.eye(3), SHAPE, top_k=300)
    assert (result["n1"], result["n2"]) == (40, 40)
    assert result["repeatability"] == 1.0
    assert result["localization_error"] == 0.0
    assert result["mscore"] == 1.0
    assert (result["c1"], result["c3"], result["c5"]) == (1.0, 1.0, 1.0)
    assert result["corner_error"] < 1e-6


def test_homography_correctness_exact_matches_and_too_few():
    rng = np.random.default_rng(1)
    points1 = rng.uniform([0, 0], [80, 70], size=(12, 2))
    points2 = points1 + [10, 5]
    desc = rng.normal(size=(12, 16)).astype(np.float32)
    prob1, prob2 = _rows(points1, rng.uniform(size=12)), _rows(points2, rng.uniform(size=12))
    assert homography_correctness(prob1, desc, prob2, desc, TRANSLATION, SHAPE, 300) == (1.0, 1.0, 1.0)
    # three matches only: no homography, all zero
    assert homography_correctness(prob1[:3], desc[:3], prob2[:3], desc[:3], TRANSLATION, SHAPE, 300) == (
        0.0,
        0.0,
        0.0,
    )


def test_homography_correctness_filters_before_top_k():
    """Points that leave the other view are dropped before the top-k cut, whatever their score."""
    rng = np.random.default_rng(2)
    good1 = rng.uniform([0, 0], [80, 70], size=(6, 2))
    leaving1 = np.array([[95.0, 10.0], [92.0, 60.0], [98.0, 30.0], [94.0, 5.0]])  # x + 10 >= W
    leaving2 = np.array([[3.0, 10.0], [5.0, 60.0], [8.0, 30.0], [1.0, 50.0]])  # x - 10 < 0
    scores = np.concatenate([np.full(6, 0.2), np.full(4, 0.9)])  # the leaving points score higher
    desc1 = rng.normal(size=(10, 16)).astype(np.float32)
    desc2 = np.concatenate([desc1[:6], rng.normal(size=(4, 16)).astype(np.float32)])
    prob1 = _rows(np.concatenate([good1, leaving1]), scores)
    prob2 = _rows(np.concatenate([good1 + [10, 5], leaving2]), scores)
    assert homography_correctness(prob1, desc1, prob2, desc2, TRANSLATION, SHAPE, 6) == (1.0, 1.0, 1.0)
    # (cut to the top 6 before filtering, each image would keep 4 leaving points and 2 good ones)


def test_inside_conventions():
    points = np.array([[99.5, 10.0], [99.0, 79.0], [-0.1, 5.0], [10.0, 80.0]])
    assert inside_image(points, SHAPE).tolist() == [True, True, False, False]
    assert inside_image(points, SHAPE, inclusive=True).tolist() == [False, True, False, False]


def test_select_k_best_ascending_last_k():
    prob = _rows([(0, 0), (1, 1), (2, 2), (3, 3)], [0.3, 0.9, 0.1, 0.5])
    desc = np.arange(4, dtype=np.float32)[:, None]
    kept, kept_desc = select_k_best(prob, 2, desc)
    assert kept[:, 2].tolist() == pytest.approx([0.5, 0.9])
    assert kept_desc[:, 0].tolist() == [3, 1]
    assert len(select_k_best(prob, 10)[0]) == 4


def test_no_repeated_keypoint_gives_nan_localization():
    prob1 = _rows([(10, 10), (20, 20)])
    prob2 = _rows([(60, 60), (70, 50)])
    n1, n2, rep, loc = repeatability(prob1, prob2, np.eye(3), SHAPE, 300)
    assert (n1, n2, rep) == (2, 2, 0.0)
    assert math.isnan(loc)


def test_empty_sets():
    empty = np.zeros((0, 3), np.float32)
    n1, n2, rep, loc = repeatability(empty, empty, np.eye(3), SHAPE, 300)
    assert (n1, n2, rep) == (0, 0, 0.0) and math.isnan(loc)
    n1, n2, rep, loc = repeatability(_rows([(5, 5)]), empty, np.eye(3), SHAPE, 300)
    assert (n1, n2, rep) == (1, 0, 0.0) and math.isnan(loc)
    no_desc = np.zeros((0, 8), np.float32)
    result = evaluate_pair(empty, no_desc, empty, no_desc, np.eye(3), SHAPE, 300)
    assert (result["c1"], result["c3"], result["c5"], result["mscore"]) == (0.0, 0.0, 0.0, 0.0)
    assert corner_error(None, np.eye(3), SHAPE) == math.inf


def test_hamming_norm_for_binary_descriptors():
    rng = np.random.default_rng(3)
    points = rng.uniform([0, 0], [80, 70], size=(20, 2))
    desc = rng.integers(0, 256, size=(20, 32), dtype=np.uint8)
    prob1, prob2 = _rows(points, rng.uniform(size=20)), _rows(points + [10, 5], rng.uniform(size=20))
    result = evaluate_pair(prob1, desc, prob2, desc, TRANSLATION, SHAPE, 300, norm=cv2.NORM_HAMMING)
    assert result["mscore"] == 1.0
    assert (result["c1"], result["c3"], result["c5"]) == (1.0, 1.0, 1.0)


def test_summarize_leaves_nan_localization_out():
    pairs = [
        {"repeatability": 0.5, "localization_error": 1.0, "c1": 1, "c3": 1, "c5": 1, "mscore": 0.4},
        {"repeatability": 0.0, "localization_error": math.nan, "c1": 0, "c3": 0, "c5": 1, "mscore": 0.2},
    ]
    means = summarize(pairs)
    assert means["repeatability"] == 0.25
    assert means["localization_error"] == 1.0
    assert (means["c1"], means["c5"]) == (0.5, 1.0)
    assert means["mscore"] == pytest.approx(0.3)


# --- boundaries and the protocol's constants (each would survive a one-character change otherwise) --------


def test_three_pixels_repeat_but_do_not_match():
    """Repeatability counts a counterpart at exactly 3 px (``<=``); the matching score does not (``<``)."""
    prob1, prob2 = _rows([(20, 15)]), _rows([(23, 15)])
    desc = _one_hot([0])
    assert repeatability(prob1, prob2, np.eye(3), SHAPE, top_k=300) == (1, 1, 1.0, 3.0)
    assert matching_score(prob1, desc, prob2, desc, np.eye(3), SHAPE, top_k=300) == 0.0
    nearer = _rows([(22.9, 15)])
    assert matching_score(prob1, desc, nearer, desc, np.eye(3), SHAPE, top_k=300) == 1.0


def test_corner_error_uses_the_last_pixel_as_corner():
    """Corners (0, 0), (0, H-1), (W-1, 0), (W-1, H-1): a 2x zoom about the origin moves each by its norm."""
    width, height = SHAPE
    expected = (0 + (height - 1) + (width - 1) + math.hypot(width - 1, height - 1)) / 4
    assert corner_error(np.diag([2.0, 2.0, 1.0]), np.eye(3), SHAPE) == pytest.approx(expected)


def test_correctness_thresholds_are_inclusive(monkeypatch):
    """An estimate exactly 1 px off at every corner counts for C1 (``<=``), 3 and 5 too."""
    import kp2d.eval.metrics as metrics

    shifted = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    monkeypatch.setattr(metrics, "protocol_homography", lambda *args, **kwargs: shifted)
    prob, desc = _rows([(10, 10)]), _one_hot([0])
    assert tuple(homography_correctness(prob, desc, prob, desc, np.eye(3), SHAPE, 300)) == (1.0, 1.0, 1.0)


def test_ransac_gets_the_mutual_matches_three_pixels_and_5000_iterations(monkeypatch):
    """``cv2.findHomography(src, dst, RANSAC, 3, maxIters=5000)`` on cross-checked matches only."""
    import kp2d.eval.metrics as metrics

    calls = []

    def capture(src, dst, method, threshold, maxIters):  # noqa: N803 - OpenCV's keyword
        calls.append((len(src), method, threshold, maxIters))
        return np.eye(3), None

    monkeypatch.setattr(metrics.cv2, "findHomography", capture)
    points = [(10, 10), (30, 12), (50, 40), (70, 20), (15, 60), (60, 65)]
    prob1, prob2 = _rows(points), _rows(points)
    desc1 = _one_hot([0, 1, 2, 3, 4, 5])
    desc2 = _one_hot([0, 1, 2, 3, 4, 4])  # 4 and 5 of image 2 both fit 4 of image 1: one mutual pair
    metrics.protocol_homography(prob1, desc1, prob2, desc2, np.eye(3), SHAPE, 300)
    assert calls == [(5, cv2.RANSAC, 3.0, 5000)]


def test_hpatches_images_are_read_bgr_and_resized_bilinearly(tmp_path):
    """The original feeds OpenCV's BGR and ``cv2.resize``'s default bilinear interpolation."""
    from kp2d.data.hpatches import read_image
    from kp2d.io.images import resize_image

    red = np.zeros((30, 40, 3), np.uint8)
    red[..., 2] = 255  # BGR: red
    cv2.imwrite(str(tmp_path / "red.png"), red)
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [0, 0, 255]
    ramp = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))[..., None].repeat(3, axis=2)
    resized = resize_image(ramp, (64, 48))
    np.testing.assert_array_equal(resized, cv2.resize(ramp, (64, 48), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(resized, cv2.resize(ramp, (64, 48), interpolation=cv2.INTER_AREA))
