"""Pixel <-> normalised coordinates, cell centres and point warps: hand-computed cases and round trips."""

import numpy as np
import torch

from kp2d.geometry import cell_centers, denormalize_points, normalize_points, warp_points, warp_points_numpy


def test_normalize_points_hand_computed():
    # a 5 x 3 image (W = 5, H = 3): x runs 0..4 -> -1..1 in steps of 0.5, y runs 0..2 -> -1..1 in steps of 1
    pixels = torch.tensor([[0.0, 0.0], [4.0, 2.0], [2.0, 1.0], [1.0, 0.5]])
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.5, -0.5]])
    torch.testing.assert_close(normalize_points(pixels, height=3, width=5), expected, atol=0, rtol=0)
    torch.testing.assert_close(denormalize_points(expected, height=3, width=5), pixels, atol=0, rtol=0)


def test_pixel_normalised_round_trip_any_shape_and_dtype():
    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        for height, width in ((240, 320), (61, 97), (8, 8)):
            pixels = torch.rand(2, 7, 11, 2, dtype=dtype) * torch.tensor([width - 1, height - 1], dtype=dtype)
            back = denormalize_points(normalize_points(pixels, height, width), height, width)
            assert back.dtype == dtype and back.shape == pixels.shape
            torch.testing.assert_close(back, pixels, atol=tolerance, rtol=0)
            unit = torch.rand(5, 2, dtype=dtype) * 2 - 1
            torch.testing.assert_close(
                normalize_points(denormalize_points(unit, height, width), height, width), unit,
                atol=tolerance, rtol=0,
            )


def test_cell_centres_are_the_middle_of_each_8_pixel_cell():
    centres = cell_centers(2, 2, 3)
    assert centres.shape == (2, 2, 2, 3)
    torch.testing.assert_close(centres[0, 0], torch.tensor([[3.5, 11.5, 19.5], [3.5, 11.5, 19.5]]))
    torch.testing.assert_close(centres[1, 1], torch.tensor([[3.5, 3.5, 3.5], [11.5, 11.5, 11.5]]))


def test_warp_points_translation_and_numpy_agree():
    homography = torch.tensor([[1.0, 0.0, 0.25], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]]).unsqueeze(0)
    points = torch.tensor([[[0.0, 0.0], [0.5, 0.5]]])
    expected = torch.tensor([[[0.25, -0.5], [0.75, 0.0]]])
    torch.testing.assert_close(warp_points(points, homography), expected)
    warped = warp_points_numpy(points[0].numpy(), homography[0].numpy())
    np.testing.assert_allclose(warped, expected[0].numpy())
