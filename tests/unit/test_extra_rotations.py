"""Extraction on turned copies of the image (``extra_rotations``): geometry, pooling, settings, evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kp2d.config import load_config
from kp2d.errors import ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import TURNED_MARGIN, extract, rotate_images, unturn_coords
from kp2d.geometry import rotation_about_center, warp_points
from kp2d.io.checkpoint import save_checkpoint
from kp2d.io.inference import InferenceSettings, check_extra_rotations, parse_extra_rotations
from kp2d.models.keypoint_net import load_keypoint_net


@pytest.fixture(scope="module")
def square() -> torch.Tensor:
    """A textured 64x64 RGB image in [0, 1]: a quarter turn maps its pixel grid onto itself."""
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7))


def test_rotation_about_center_by_hand():
    # W=5, H=3: the centre is (2, 1); a quarter turn counter-clockwise (y down) takes (4, 1) to (2, -1)
    rotation = rotation_about_center(90, 3, 5, dtype=torch.float64)
    points = torch.tensor([[4.0, 1.0], [2.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    want = torch.tensor([[2.0, -1.0], [2.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(warp_points(points, rotation), want, atol=1e-12, rtol=0)
    # 30 degrees: the point 2 px right of the centre goes to (2 + 2 cos 30, 1 - 2 sin 30)
    turned = warp_points(points[:1], rotation_about_center(30, 3, 5, dtype=torch.float64))
    want = torch.tensor([[2 + 2 * math.cos(math.pi / 6), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(turned, want)


def test_rotate_images_a_quarter_turn_is_rot90(square):
    turned = rotate_images(square[None], 90.0)
    torch.testing.assert_close(turned, torch.rot90(square[None], 1, dims=(2, 3)), atol=1e-5, rtol=0)
    # outside the picture is zero: the corners of a 45-degree turn
    corner = rotate_images(square[None], 45.0)[0, :, 0, 0]
    assert torch.equal(corner, torch.zeros(3))


def _pixels(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ys, xs)``, each ``(H, W)`` float64: every pixel's row and column."""
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    return torch.meshgrid(rows, cols, indexing="ij")


def _blob(height: int, width: int, x: float, y: float, sigma: float = 2.0) -> torch.Tensor:
    ys, xs = _pixels(height, width)
    return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))[None, None]


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    weights = image[0, 0].double()
    ys, xs = _pixels(*weights.shape)
    return float((weights * xs).sum() / weights.sum()), float((weights * ys).sum() / weights.sum())


def test_rotate_images_onto_a_larger_grid_by_hand():
    """Turned and enlarged in one step: a blob at p lands at (R p + 0.5) * W'/W - 0.5 (likewise y)."""
    height, width, size = 48, 64, (120, 160)  # x2.5
    image = _blob(height, width, 40.0, 18.0).float()
    turned = rotate_images(image, 30.0, size)
    assert turned.shape == (1, 1, *size)
    x, y = warp_points(torch.tensor([[40.0, 18.0]], dtype=torch.float64),
                       rotation_about_center(30.0, height, width, dtype=torch.float64))[0].tolist()
    want = ((x + 0.5) * 2.5 - 0.5, (y + 0.5) * 2.5 - 0.5)
    assert _centroid(turned) == pytest.approx(want, abs=0.05)
    assert rotate_images(image.double(), 30.0, size).dtype == torch.float64  # the grid follows the image
    # a turn of 0 onto the same grid is the image itself
    torch.testing.assert_close(rotate_images(image, 0.0), image, atol=1e-6, rtol=0)


def test_an_enlarged_turned_copy_is_sampled_once(square):
    """The network's input of a turned copy: the same picture as turning then resizing, but sharper."""
    from kp2d.features.extraction import _network_batch, rescale_images

    smooth = torch.nn.functional.interpolate(square[None], scale_factor=0.25, mode="bilinear")
    smooth = torch.nn.functional.interpolate(smooth, size=(64, 64), mode="bilinear")
    once = _network_batch(smooth, 2.8, 45.0)
    twice = rescale_images(rotate_images(smooth, 45.0), 2.8)
    assert once.shape == twice.shape == (1, 3, 179, 179)
    assert (once - twice).abs().mean() < 0.01
    # on fine texture two interpolations blur, one does not as much
    middle = (slice(None), slice(None), slice(60, 120), slice(60, 120))
    assert _network_batch(square[None], 2.8, 45.0)[middle].std() > 1.05 * rescale_images(
        rotate_images(square[None], 45.0), 2.8)[middle].std()
    # shrunk: turned, then resized with antialiasing
    torch.testing.assert_close(_network_batch(square[None], 0.5, 45.0),
                               rescale_images(rotate_images(square[None], 45.0), 0.5))


def test_unturn_coords_maps_back_and_drops_the_margin():
    height, width = 48, 64
    points = torch.tensor([[31.5, 23.5], [40.0, 30.0], [63.0, 23.5]]).t().reshape(1, 2, 3, 1)
    back, inside = unturn_coords(points, 90.0, height, width)
    turn = rotation_about_center(90.0, height, width)
    again = warp_points(back.flatten(2).transpose(1, 2), turn)
    torch.testing.assert_close(again, points.flatten(2).transpose(1, 2), atol=1e-4, rtol=0)
    # the centre stays inside; (63, 23.5) of the turned image is (31.5, -8) of the original: outside
    assert inside.flatten().tolist() == [True, True, False]
    assert TURNED_MARGIN == 8.0


def test_turned_keypoints_are_those_of_the_turned_image(random_net, square):
    """A quarter turn's keypoints are the plain keypoints of the rot90 image, mapped back."""
    net = random_net.to(memory_format=torch.channels_last)
    plain = extract(net, square, top_k=None)
    rotated = extract(net, torch.rot90(square, 1, dims=(1, 2)), top_k=None)
    pooled = extract(net, square, top_k=None, extra_rotations=(90,))
    back = warp_points(rotated.keypoints, rotation_about_center(-90.0, 64, 64))
    inside = ((back >= TURNED_MARGIN) & (back <= 63 - TURNED_MARGIN)).all(dim=1)
    assert len(pooled) == len(plain) + int(inside.sum())
    union_points = torch.cat([plain.keypoints, back[inside]])
    union_descs = torch.cat([plain.descriptors, rotated.descriptors[inside]])
    union_scores = torch.cat([plain.scores, rotated.scores[inside]])
    torch.testing.assert_close(pooled.scores, union_scores.sort(descending=True).values, atol=1e-5, rtol=0)
    for point, desc in zip(pooled.keypoints, pooled.descriptors, strict=True):
        index = int((union_points - point).norm(dim=1).argmin())
        torch.testing.assert_close(union_points[index], point, atol=1e-3, rtol=0)
        torch.testing.assert_close(union_descs[index], desc, atol=1e-4, rtol=0)
    top = extract(net, square, top_k=20, extra_rotations=(90,))
    torch.testing.assert_close(top.scores, pooled.scores[:20])


def test_settings_entry_label_and_checks():
    settings = InferenceSettings(2.0, (), [45, -45, 405, 0, -180])  # 405 is 45; 0 and duplicates drop out
    assert settings.extra_rotations == (45.0, -45.0, 180.0)
    assert settings.to_entry() == {"scale_factor": 2.0, "extra_rotations": [45.0, -45.0, 180.0]}
    assert InferenceSettings(2.0, (), (45, -45)).label() == " (input x2, turned 0/45/-45)"
    assert InferenceSettings(1.0, (), (30,)).label() == " (turned 0/30)"
    assert InferenceSettings(2.0, (1.0,), (45,)).label() == " (input x2+x1, turned 0/45)"
    for bad in ("45", 45, [float("nan")], [True], ["a"]):
        with pytest.raises(ConfigError, match="extra_rotations"):
            check_extra_rotations(bad)


def test_parse_extra_rotations():
    assert parse_extra_rotations("45,-45") == (45.0, -45.0)
    assert parse_extra_rotations("none") == () == parse_extra_rotations("")
    for bad in ("x", "45,,", "inf"):
        with pytest.raises(ConfigError, match="--extra-rotations must be angles in degrees"):
            parse_extra_rotations(bad)


def test_recorded_rotations_are_the_default_and_the_detector_pools_them(random_net, square, tmp_path):
    path = tmp_path / "turned.ckpt"
    entry = InferenceSettings(1.0, (), (90,)).to_entry()
    save_checkpoint(path, load_config("v4"), random_net, inference=entry)
    net = load_keypoint_net(path)
    assert net.inference_settings.extra_rotations == (90.0,)
    want = extract(random_net.to(memory_format=torch.channels_last), square, top_k=50, extra_rotations=(90,))
    torch.testing.assert_close(net.extract(square, top_k=50).keypoints, want.keypoints)
    assert len(net.extract(square, top_k=None, extra_rotations=())) < len(net.extract(square, top_k=None))
    # the HPatches detector: the plain cells, then those of the turned copy inside the margin
    images = (square.permute(1, 2, 0).numpy() * 255).astype(np.uint8)[None]
    pooled = KeyPointNetDetector(net, "cpu")
    assert pooled.extra_rotations == (90.0,)
    (rows, descs), = pooled(images)
    (plain_rows, _), = KeyPointNetDetector(random_net, "cpu")(images)
    quarter = np.ascontiguousarray(np.rot90(images, 1, (1, 2)))
    (turned_rows, _), = KeyPointNetDetector(random_net, "cpu")(quarter)
    assert len(rows) == len(descs) > len(plain_rows)
    np.testing.assert_allclose(rows[: len(plain_rows)], plain_rows, atol=1e-5)
    back = warp_points(torch.from_numpy(turned_rows[:, :2]), rotation_about_center(-90.0, 64, 64)).numpy()
    inside = ((back >= TURNED_MARGIN) & (back <= 63 - TURNED_MARGIN)).all(axis=1)
    np.testing.assert_allclose(rows[len(plain_rows):, :2], back[inside], atol=1e-3)
    assert KeyPointNetDetector(net, "cpu", extra_rotations=()).extra_rotations == ()
