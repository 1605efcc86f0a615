import math

import numpy as np
import pytest
import torch

from kp2d.errors import ConfigError
from kp2d.eval.metrics import corner_error
from kp2d.features.matching import descriptor_distances, estimate_homography, match, match_mutual_nn, match_nn
from kp2d.geometry import warp_points_numpy


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def chord(degrees: float) -> float:
    """Distance between two unit vectors ``degrees`` apart."""
    return 2 * math.sin(math.radians(degrees) / 2)


# desc0: a0 at 10 deg, a1 at -12 deg; desc1: b0 at 0 deg, b1 at 40 deg
DESC0 = torch.tensor([unit(10), unit(-12)])
DESC1 = torch.tensor([unit(0), unit(40)])


def test_nearest_neighbours_by_hand():
    matches, distances = match_nn(DESC0, DESC1)
    assert matches.tolist() == [[0, 0], [1, 0]]  # both nearest to b0
    torch.testing.assert_close(distances, torch.tensor([chord(10), chord(12)]))
    assert matches.dtype == torch.long


def test_mutual_keeps_only_pairs_that_choose_each_other():
    matches, distances = match_mutual_nn(DESC0, DESC1)
    assert matches.tolist() == [[0, 0]]  # b0's nearest is a0; a1 loses; b1's nearest (a0) is taken
    torch.testing.assert_close(distances, torch.tensor([chord(10)]))


def test_ratio_test_by_hand():
    # a0: nearest 10 deg, second 30 deg: ratio chord(10)/chord(30) = 0.337
    # a1: nearest 12 deg, second 52 deg: ratio 0.238; b0 (reverse): nearest 10, second 12: ratio 0.834
    assert match(DESC0, DESC1, mutual=False, ratio=0.8)[0].tolist() == [[0, 0], [1, 0]]
    assert match(DESC0, DESC1, mutual=False, ratio=0.3)[0].tolist() == [[1, 0]]
    assert match(DESC0, DESC1, mutual=True, ratio=0.85)[0].tolist() == [[0, 0]]
    assert match(DESC0, DESC1, mutual=True, ratio=0.8)[0].tolist() == []  # fails b0's ratio test
    assert match(DESC0, DESC1, mutual=True)[0].tolist() == [[0, 0]]


def test_mutual_matching_is_symmetric():
    generator = torch.Generator().manual_seed(0)
    desc0 = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=1)
    desc1 = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1)
    for ratio in (None, 0.9):
        forward, dist_forward = match(desc0, desc1, ratio=ratio)
        backward, dist_backward = match(desc1, desc0, ratio=ratio)
        assert len(forward) > 0
        assert sorted(map(tuple, forward.tolist())) == sorted(map(tuple, backward.flip(1).tolist()))
    distances = descriptor_distances(desc0, desc1)
    matches, dist = match(desc0, desc1, mutual=False)
    torch.testing.assert_close(dist, distances.min(dim=1).values)
    assert matches[:, 0].tolist() == list(range(40))


def test_single_candidate_and_empty_inputs():
    one = torch.tensor([[1.0, 0.0]])
    assert match(DESC0, one, mutual=False, ratio=0.5)[0].tolist() == [[0, 0], [1, 0]]
    matches, distances = match(torch.zeros(0, 2), DESC1)
    assert matches.shape == (0, 2) and distances.shape == (0,)
    assert match(DESC0, torch.zeros(0, 2))[0].shape == (0, 2)


@pytest.mark.parametrize(
    ("desc0", "desc1"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 5)),
        (torch.zeros(3), torch.zeros(3, 3)),
        (torch.zeros(1, 2, 3), torch.zeros(2, 3)),
    ],
)
def test_shape_errors_name_the_shapes(desc0, desc1):
    with pytest.raises(ValueError, match=r"\(N0, D\).*got \("):
        match(desc0, desc1)


def test_match_distances_are_the_pairs_own():
    """Identical unit descriptors are 0 apart; cdist's matrix-product form (used above 25 rows) gave up to
    9e-4, and every returned distance is now ``|d0[i] - d1[j]|`` of its pair."""
    generator = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(1000, 256, generator=generator), dim=1)
    matches, distances = match(desc, desc)
    assert len(matches) == 1000 and bool((distances == 0).all())
    other = torch.nn.functional.normalize(desc + 0.1 * torch.randn(1000, 256, generator=generator), dim=1)
    matches, distances = match(desc, other, ratio=0.9)
    expected = (desc[matches[:, 0]] - other[matches[:, 1]]).norm(dim=1)
    assert len(matches) > 900 and torch.equal(distances, expected)


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.2, True, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        match(DESC0, DESC1, ratio=ratio)


# --- homography -------------------------------------------------------------------------------------------

H_TRUE = np.array([[0.9, 0.1, 20.0], [-0.05, 1.1, 10.0], [1e-4, 2e-4, 1.0]])


def _correspondences(n_inliers: int = 60, n_outliers: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    points0 = rng.uniform(0, [320, 240], size=(n_inliers + n_outliers, 2))
    points1 = warp_points_numpy(points0, H_TRUE)
    points1[n_inliers:] = rng.uniform(0, [320, 240], size=(n_outliers, 2))  # wrong partners
    order = rng.permutation(len(points1))  # kpts1 in another order than kpts0
    kpts1 = np.empty_like(points1)
    kpts1[order] = points1
    matches = np.stack([np.arange(len(points0)), order], axis=1)
    return torch.from_numpy(points0).float(), torch.from_numpy(kpts1).float(), torch.from_numpy(matches)


@pytest.mark.parametrize("method", ["usac", "ransac"])
def test_estimate_homography_recovers_a_known_homography(method):
    kpts0, kpts1, matches = _correspondences()
    homography, inliers = estimate_homography(kpts0, kpts1, matches, method=method, threshold=2.0)
    assert homography.shape == (3, 3)
    assert inliers.dtype == bool and inliers.shape == (80,)
    assert inliers[:60].all() and not inliers[60:].any()
    assert corner_error(homography, H_TRUE, (320, 240)) < 0.05


def test_estimate_homography_accepts_numpy_and_needs_four_matches():
    kpts0, kpts1, matches = _correspondences(n_outliers=0)
    homography, inliers = estimate_homography(kpts0.numpy(), kpts1.numpy(), matches.numpy())
    assert corner_error(homography, H_TRUE, (320, 240)) < 0.05 and inliers.all()
    homography, inliers = estimate_homography(kpts0, kpts1, matches[:3])
    assert homography is None and inliers.tolist() == [False, False, False]
    with pytest.raises(ConfigError, match="unknown homography method 'lmeds'"):
        estimate_homography(kpts0, kpts1, matches, method="lmeds")
    with pytest.raises(ValueError, match=r"kpts0 must have shape \(N, 2\)"):
        estimate_homography(kpts0[:, :1], kpts1, matches)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_mixed_descriptors_match_in_float32(dtype):
    generator = torch.Generator().manual_seed(1)
    desc0 = torch.nn.functional.normalize(torch.randn(12, 64, generator=generator), dim=1).to(dtype)
    desc1 = torch.nn.functional.normalize(torch.randn(20, 64, generator=generator), dim=1).to(dtype)
    expected, expected_distances = match(desc0.float(), desc1.float(), ratio=0.95)
    assert len(expected) > 0
    for pair in ((desc0, desc1), (desc0, desc1.float()), (desc0.float(), desc1)):  # <= 25 rows: no mm path
        matches, distances = match(*pair, ratio=0.95)
        assert torch.equal(matches, expected)
        assert distances.dtype == torch.float32
        torch.testing.assert_close(distances, expected_distances, atol=0, rtol=0)
    assert descriptor_distances(desc0, desc1.double()).dtype == torch.float64
    assert match(desc0, desc1[:0])[1].dtype == torch.float32
    assert torch.equal(match_nn(desc0, desc1)[0], match_nn(desc0.float(), desc1.float())[0])


@pytest.mark.parametrize(
    "bad",
    [lambda m: m.t(), lambda m: torch.cat([m, m[:, :1]], dim=1), lambda m: m.flatten(), lambda m: m[None]],
)
def test_estimate_homography_needs_matches_of_shape_m_by_2(bad):
    kpts0, kpts1, matches = _correspondences()  # 80 matches: a (2, 80) or (80, 3) input would reshape
    with pytest.raises(ValueError, match=r"matches must have shape \(M, 2\)"):
        estimate_homography(kpts0, kpts1, bad(matches))
    for empty in (matches[:0], np.zeros((0, 2), np.int64), []):
        homography, inliers = estimate_homography(kpts0, kpts1, empty)
        assert homography is None and inliers.shape == (0,)


def test_collinear_matches_give_no_homography():
    """RANSAC fits 4 collinear matches with a rank-1 matrix (USAC already finds none): no homography."""
    kpts0 = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [45.0, 45.0]])
    kpts1 = kpts0 * 2 + 5
    matches = np.stack([np.arange(4), np.arange(4)], axis=1)
    rng = np.random.default_rng(2)
    points0 = rng.uniform(0, [320, 240], size=(30, 2))
    zoom_out = np.array([[0.05, 0.001, 3000.0], [-0.002, 0.05, 2000.0], [1e-6, 0.0, 1.0]])
    points1 = warp_points_numpy(points0, zoom_out)
    pairs = np.stack([np.arange(30)] * 2, axis=1)
    for method in ("ransac", "usac"):
        homography, inliers = estimate_homography(kpts0, kpts1, matches, method=method)
        assert homography is None and inliers.tolist() == [False] * 4
        # a proper homography with a large translation and zoom is not mistaken for a degenerate one
        homography, inliers = estimate_homography(points0, points1, pairs, method=method)
        assert homography is not None and inliers.all()
        np.testing.assert_allclose(warp_points_numpy(points0, homography), points1, atol=1e-3, rtol=0)


def test_estimate_homography_takes_bf16_keypoints():
    kpts0, kpts1, matches = _correspondences()
    rounded0, rounded1 = kpts0.bfloat16(), kpts1.bfloat16()  # numpy has no bf16: read through float32
    homography, inliers = estimate_homography(rounded0, rounded1, matches, method="ransac", threshold=2.0)
    expected, expected_inliers = estimate_homography(
        rounded0.float(), rounded1.float(), matches, method="ransac", threshold=2.0
    )
    np.testing.assert_array_equal(homography, expected)
    np.testing.assert_array_equal(inliers, expected_inliers)
    assert inliers[:60].mean() > 0.9 and corner_error(homography, H_TRUE, (320, 240)) < 2.0


def test_numpy_descriptors_match_as_tensors():
    """``kp2d detect`` writes numpy descriptors; matching them gives what the tensors give."""
    matches, distances = match(DESC0.numpy(), DESC1.numpy()[::-1], mutual=False)
    expected, expected_distances = match(DESC0, DESC1.flip(0), mutual=False)
    assert torch.equal(matches, expected) and torch.equal(distances, expected_distances)
    assert descriptor_distances(DESC0.numpy(), DESC1).shape == (2, 2)
    with pytest.raises(ValueError, match=r"shapes \(N0, D\) and \(N1, D\)"):
        match(DESC0.numpy().ravel(), DESC1.numpy())


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([3, 80], "column 1 indexes kpts1, which has 80 keypoints; got index 80"),
        ([-1, 4], "column 0 indexes kpts0, which has 80 keypoints; got index -1"),
    ],
)
def test_estimate_homography_refuses_match_indices_outside_the_keypoints(row, message):
    """A negative index used to pick the last keypoint silently; one too large was a raw IndexError."""
    kpts0, kpts1, matches = _correspondences()
    bad = matches.clone()
    bad[3] = torch.tensor(row)
    with pytest.raises(ValueError, match=message):
        estimate_homography(kpts0, kpts1, bad)
