"""The Python API refuses NaN / infinite input and bad options as the command line does (issue 25, 8)."""

import math
import re

import numpy as np
import pytest
import torch

from kp2d.checks import check_finite, check_finite_rows, check_integer, check_unit_interval, parse_size_wh
from kp2d.errors import ConfigError, DataError
from kp2d.features.extraction import extract
from kp2d.features.matching import descriptor_distances, estimate_homography, match
from kp2d.visualization import draw_keypoints, draw_matches, draw_score_heatmap

NAN, INF = math.nan, math.inf


def descriptors(count: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit descriptors and slightly perturbed copies: every row's mutual nearest neighbour is its copy."""
    generator = torch.Generator().manual_seed(seed)
    desc0 = torch.nn.functional.normalize(torch.randn(count, 256, generator=generator), dim=1)
    noise = 0.01 * torch.randn(count, 256, generator=generator)
    return desc0, torch.nn.functional.normalize(desc0 + noise, dim=1)


def test_clean_descriptors_match_every_row():
    desc0, desc1 = descriptors()
    matches, _ = match(desc0, desc1)
    assert matches.tolist() == [[i, i] for i in range(200)]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("which", ["desc0", "desc1"])
def test_one_non_finite_descriptor_row_is_refused(which, bad):
    desc0, desc1 = descriptors()
    (desc0 if which == "desc0" else desc1)[17, 3] = bad  # matched 1 pair of 200 instead of 199
    expected = rf"^{which} has NaN or infinite values in 1 of 200 rows \(rows 17\)$"
    with pytest.raises(DataError, match=expected):
        match(desc0, desc1)
    with pytest.raises(DataError, match=f"^{which} has NaN"):
        descriptor_distances(desc0, desc1)


def test_all_nan_descriptors_are_refused_also_as_numpy():
    desc0 = np.full((7, 256), np.nan, dtype=np.float32)  # matched at distance NaN
    desc1 = descriptors(7)[1].numpy()
    expected = r"^desc0 has NaN or infinite values in 7 of 7 rows \(rows 0, 1, 2, 3, 4, \.\.\.\)$"
    with pytest.raises(DataError, match=expected):
        match(desc0, desc1)


@pytest.mark.parametrize("ratio", [0, -1, 1.5, NAN, INF, "0.8", True])
def test_bad_ratio(ratio):
    desc0, desc1 = descriptors(10)
    with pytest.raises(ConfigError, match=r"^ratio must be a number in \(0, 1\], got "):
        match(desc0, desc1, ratio=ratio)


@pytest.mark.parametrize("mutual", ["yes", None, 1])
def test_bad_mutual(mutual):
    desc0, desc1 = descriptors(10)
    with pytest.raises(ConfigError, match="^mutual must be True or False"):
        match(desc0, desc1, mutual=mutual)


def homography_case(count: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, the same points shifted by (5, -3), and the identity matches."""
    points = np.random.default_rng(0).uniform(0, 300, (count, 2))
    return points, points + [5.0, -3.0], np.stack([np.arange(count)] * 2, axis=1)


def test_homography_of_a_known_shift():
    kpts0, kpts1, matches = homography_case()
    homography, inliers = estimate_homography(kpts0, kpts1, matches, method="ransac")
    np.testing.assert_allclose(homography / homography[2, 2], [[1, 0, 5], [0, 1, -3], [0, 0, 1]], atol=1e-6)
    assert inliers.all()


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("which", ["kpts0", "kpts1"])
def test_non_finite_keypoints_are_refused(which, bad):
    kpts0, kpts1, matches = homography_case()
    (kpts0 if which == "kpts0" else kpts1)[[4, 9]] = bad  # was LinAlgError: SVD did not converge
    expected = rf"^{which} has NaN or infinite values in 2 of 30 rows \(rows 4, 9\)$"
    with pytest.raises(DataError, match=expected):
        estimate_homography(torch.from_numpy(kpts0), kpts1, matches)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 0}, r"^threshold must be a finite number > 0 \(pixels\), got 0$"),
        ({"threshold": -1}, r"^threshold must be a finite number > 0 \(pixels\), got -1$"),
        ({"threshold": NAN}, r"^threshold must be a finite number > 0 \(pixels\), got nan$"),
        ({"threshold": INF}, r"^threshold must be a finite number > 0 \(pixels\), got inf$"),
        ({"threshold": "3"}, r"^threshold must be a finite number > 0 \(pixels\), got '3'$"),
        ({"max_iters": 0}, r"^max_iters must be an integer >= 1, got 0$"),
        ({"max_iters": 2.5}, r"^max_iters must be an integer >= 1, got 2.5$"),
        ({"confidence": 0}, r"^confidence must be a number in \(0, 1\), got 0$"),
        ({"confidence": 1}, r"^confidence must be a number in \(0, 1\), got 1$"),  # OpenCV's assertion
        ({"confidence": NAN}, r"^confidence must be a number in \(0, 1\), got nan$"),
        ({"method": ["usac"]}, r"^unknown homography method"),
    ],
)
def test_bad_homography_options(options, message):
    kpts0, kpts1, matches = homography_case()
    with pytest.raises(ConfigError, match=message):
        estimate_homography(kpts0, kpts1, matches, **options)


@pytest.mark.parametrize("score_threshold", [NAN, INF, -INF, None, "0.1"])
def test_bad_score_threshold(random_net, score_threshold):
    with pytest.raises(ConfigError, match="^score_threshold must be a finite number, got "):
        extract(random_net, np.zeros((64, 64, 3), np.uint8), score_threshold=score_threshold)


IMAGE = np.zeros((40, 48, 3), np.uint8)
PAIR = [(0, 0)]
POINTS = np.array([[3.0, 4.0], [20.0, 30.0]])
CELLS = np.zeros((5, 6))


@pytest.mark.parametrize(
    ("draw", "message"),
    [
        (lambda: draw_keypoints(IMAGE, POINTS, radius=0), "^radius must be a finite number > 0"),
        (lambda: draw_keypoints(IMAGE, POINTS, radius=NAN), "^radius must be a finite number > 0"),
        (lambda: draw_score_heatmap(IMAGE, CELLS, alpha=1.5), "^alpha must be a finite number >= 0 and <="),
        (lambda: draw_score_heatmap(IMAGE, CELLS, alpha=NAN), "^alpha must be"),
        (lambda: draw_score_heatmap(IMAGE, CELLS, cell=0), "^cell must be an integer >= 1"),
        (lambda: draw_score_heatmap(IMAGE, CELLS, scale_factor=0), "^scale_factor must be"),
        (lambda: draw_score_heatmap(IMAGE, CELLS, scale_factor=NAN), "^scale_factor must be"),
        (lambda: draw_matches(IMAGE, IMAGE, POINTS, POINTS, PAIR, gap=-1), "^gap must be an integer >= 0"),
        (lambda: draw_matches(IMAGE, IMAGE, POINTS, POINTS, PAIR, gap=2.5), "^gap must be an integer"),
        (lambda: draw_matches(IMAGE, IMAGE, POINTS, POINTS, PAIR, max_lines=0), "^max_lines must be"),
    ],
)
def test_bad_drawing_options(draw, message):
    with pytest.raises(ConfigError, match=message):
        draw()


def test_drawing_non_finite_values_is_refused():
    bad = POINTS.copy()
    bad[1, 0] = NAN  # was "cannot convert float NaN to integer"
    with pytest.raises(DataError, match=r"^keypoints has NaN or infinite values in 1 of 2 rows \(rows 1\)$"):
        draw_keypoints(IMAGE, bad)
    with pytest.raises(DataError, match="^kpts1 has NaN"):
        draw_matches(IMAGE, IMAGE, POINTS, bad, [[0, 0]])
    with pytest.raises(DataError, match="^scores has NaN"):
        draw_keypoints(IMAGE, POINTS, scores=np.array([0.5, NAN]))
    scores = np.zeros((5, 6))
    scores[2, 3] = NAN
    with pytest.raises(DataError, match=r"^cell_scores has NaN or infinite values in 1 of 5 rows"):
        draw_score_heatmap(IMAGE, scores)


def test_the_cli_and_the_api_share_one_check_and_its_words():
    with pytest.raises(ConfigError, match=r"^--threshold must be a finite number > 0 \(pixels\), got nan$"):
        check_finite("--threshold", NAN, above=0, unit="pixels")
    with pytest.raises(ConfigError, match=r"^--ratio must be a number in \(0, 1\], got 0$"):
        check_unit_interval("--ratio", 0.0)
    with pytest.raises(ConfigError, match="^--nms-radius must be a finite number >= 0, got -1$"):
        check_finite("--nms-radius", -1.0, minimum=0)
    assert check_integer("top_k", np.int64(3)) == 3
    check_finite_rows("x", np.zeros((0, 2)))  # empty and integer input pass
    check_finite_rows("x", torch.arange(6).view(3, 2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("320x240", None),
        ("16384X8", None),
        ("320", "--size must be WIDTHxHEIGHT (e.g. 320x240), got '320'"),
        ("0x240", "--size must be WIDTHxHEIGHT with positive sides, got '0x240'"),
        ("16392x64", "--size 16392x64: width and height must be at most 16384 pixels"),
    ],
)
def test_parse_size_wh_is_every_size_option(text, message):
    """One WxH parser and upper bound for overfit --size, export --size and eval --shape."""
    if message is None:
        width, height = (int(part) for part in text.lower().split("x"))
        assert parse_size_wh(text, "--size") == (width, height)
    else:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            parse_size_wh(text, "--size")
