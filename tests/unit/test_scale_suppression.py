"""Suppression across scales (``extra_suppression``): the grid search, extraction, settings, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d.errors import ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import extract
from kp2d.features.scale_suppression import cell_pitch_xy, suppressed_across_scales
from kp2d.io.inference import InferenceSettings, check_extra_suppression, parse_extra_suppression


def _grid(scores: list[list[float]], pitch: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's cell scores ``(1, Hc, Wc)``, keypoints at the cells' centres ``(1, 2, Hc, Wc)``."""
    cell_scores = torch.tensor(scores)
    rows, cols = cell_scores.shape
    y, x = torch.meshgrid(torch.arange(rows) * pitch + pitch / 2, torch.arange(cols) * pitch + pitch / 2,
                          indexing="ij")
    return cell_scores[None], torch.stack([x, y])[None]


def _one(points, point_scores, scores, coords, valid, pitch, radius):
    """The suppression of points all in image 0."""
    index = torch.zeros(len(points), dtype=torch.long)
    return suppressed_across_scales(points, point_scores, index, scores, coords, valid, pitch, radius)


def test_by_hand():
    """A 3x3 grid of 4-px cells, keypoints at the centres (2, 6, 10): a point 0.5 px from the middle cell's
    keypoint gives way to it when that scores at least as much, not when it scores less, not when the cell
    is invalid, not beyond the radius; radius 0 suppresses nothing."""
    scores, coords = _grid([[0.1, 0.1, 0.1], [0.1, 0.6, 0.1], [0.1, 0.1, 0.1]])
    valid = torch.ones(1, 3, 3, dtype=torch.bool)
    points = torch.tensor([[6.5, 6.0], [6.5, 6.0], [6.0, 8.5], [0.5, 0.5], [9.0, 9.0]])
    point_scores = torch.tensor([0.5, 0.7, 0.6, 0.05, 0.2])
    hit = _one(points, point_scores, scores, coords, valid, (4.0, 4.0), 1.0)
    # 0.5 px from (6, 6) at 0.6 >= 0.5: out; same place at 0.7 > 0.6: kept; 2.5 px from (6, 6) and
    # (6, 10): beyond 1 px; 2.1 px from (2, 2): beyond; 1.4 px from (10, 10) scoring 0.1 < 0.2: kept
    assert hit.tolist() == [True, False, False, False, False]
    wider = _one(points, point_scores, scores, coords, valid, (4.0, 4.0), 2.5)
    assert wider.tolist() == [True, False, True, True, False]
    valid[0, 1, 1] = False
    assert not _one(points, point_scores, scores, coords, valid, (4.0, 4.0), 1.0).any()
    assert not _one(points, point_scores, scores, coords, valid, (4.0, 4.0), 0).any()
    empty = _one(torch.zeros(0, 2), torch.zeros(0), scores, coords, valid, (4.0, 4.0), 3)
    assert empty.shape == (0,)


@pytest.mark.parametrize("radius", [0.7, 3.0, 9.5])
def test_the_grid_search_finds_what_every_pair_finds(radius):
    """Three images' keypoints anywhere within their cells (and half a pixel beyond), points anywhere in
    any image: the same answer as comparing every point with every cell of its own image."""
    generator = torch.Generator().manual_seed(5)
    images, rows, cols, pitch = (3, 7, 9, (3.5, 2.9))
    scores = torch.rand(images, rows, cols, generator=generator)
    corner = torch.stack(torch.meshgrid(torch.arange(cols) * pitch[0], torch.arange(rows) * pitch[1],
                                        indexing="xy"))
    inside = torch.rand(images, 2, rows, cols, generator=generator) * torch.tensor(pitch).view(2, 1, 1)
    coords = corner + inside - 0.5 + torch.rand(images, 2, rows, cols, generator=generator)
    valid = torch.rand(images, rows, cols, generator=generator) > 0.2
    points = torch.rand(300, 2, generator=generator) * torch.tensor([cols * pitch[0], rows * pitch[1]])
    point_scores = torch.rand(300, generator=generator)
    index = torch.randint(images, (300,), generator=generator)
    hit = suppressed_across_scales(points, point_scores, index, scores, coords, valid, pitch, radius)
    cell_xy = coords.flatten(2).transpose(1, 2)[index]  # (N, Hc*Wc, 2): each point's own image's cells
    near = (cell_xy - points[:, None]).norm(dim=2) <= radius
    stronger = scores.flatten(1)[index] >= point_scores[:, None]
    assert torch.equal(hit, (near & stronger & valid.flatten(1)[index]).any(dim=1))
    assert 0 < hit.sum() < len(hit)
    for image in range(images):  # the same as each image alone
        alone = index == image
        part = slice(image, image + 1)
        one = suppressed_across_scales(points[alone], point_scores[alone], index[alone] * 0, scores[part],
                                       coords[part], valid[part], pitch, radius)
        assert torch.equal(one, hit[alone])


def test_cell_pitch():
    """A 320x240 image run at 896x672: a cell of 8 network pixels is 8 * 320 / 896 image pixels wide."""
    assert cell_pitch_xy((320, 240), (896, 672)) == pytest.approx((320 / 112, 240 / 84))
    assert cell_pitch_xy((100, 50), (200, 200)) == (4.0, 2.0)


@pytest.fixture(scope="module")
def net(channels_last_net):
    return channels_last_net


def test_extract_leaves_out_the_suppressed_extra_keypoints(net, image):
    """By hand: the pooled set is the main run's keypoints and the coarse run's that no main-run keypoint
    within the radius outscores; the main run's own keypoints and the turned copies' are all kept."""
    main = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(), score_threshold=0)
    coarse = extract(net, image, top_k=None, scale_factor=1.0, extra_scales=(), score_threshold=0)
    radius = 3.0
    near = torch.cdist(coarse.keypoints, main.keypoints) <= radius
    beaten = (near & (main.scores[None] >= coarse.scores[:, None])).any(dim=1)
    assert 0 < beaten.sum() < len(coarse)
    pooled = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(1,), score_threshold=0,
                     extra_suppression=radius)
    assert len(pooled) == len(main) + int((~beaten).sum())
    want = torch.cat([main.scores, coarse.scores[~beaten]]).sort(descending=True).values
    torch.testing.assert_close(pooled.scores, want, atol=1e-6, rtol=0)
    plain = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(1,), score_threshold=0)
    assert len(plain) == len(main) + len(coarse)
    turned = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(), extra_rotations=(30,))
    both = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(), extra_rotations=(30,),
                   extra_suppression=radius)
    assert torch.equal(both.scores, turned.scores)


def test_the_hpatches_detector_suppresses_the_same_cells(net, image):
    """The evaluation's detector leaves out exactly the coarse cells the main run's cells outscore nearby."""
    frame = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[None]
    plain = KeyPointNetDetector(net, scale_factor=2.0, extra_scales=(1.0,), precision="fp32")(frame)[0]
    suppressed = KeyPointNetDetector(net, scale_factor=2.0, extra_scales=(1.0,), precision="fp32",
                                     extra_suppression=3.0)(frame)[0]
    main = KeyPointNetDetector(net, scale_factor=2.0, precision="fp32")(frame)[0][0]
    coarse = plain[0][len(main):]
    near = np.linalg.norm(coarse[:, None, :2] - main[None, :, :2], axis=2) <= 3.0
    beaten = (near & (main[None, :, 2] >= coarse[:, None, 2])).any(axis=1)
    assert 0 < beaten.sum() < len(coarse)
    np.testing.assert_array_equal(suppressed[0], np.concatenate([main, coarse[~beaten]]))
    assert len(suppressed[1]) == len(suppressed[0])


def test_settings_check_entry_label_and_parse():
    settings = InferenceSettings(2.8, (1.25,), (), "auto", 1.0, 4.0)
    assert settings.to_entry() == {"scale_factor": 2.8, "extra_scales": [1.25], "precision": "auto",
                                   "extra_suppression": 4.0}
    assert settings.label() == " (input x2.8+x1.25, extra scales suppressed within 4 px, auto)"
    assert InferenceSettings(2.0, (), (45,), "fp32", 1.0, 4.0).label() == " (input x2, turned 0/45)"
    assert "extra_suppression" not in InferenceSettings(2.0, (1.0,)).to_entry()
    assert check_extra_suppression(np.float32(2.5)) == 2.5 and check_extra_suppression(0) == 0.0
    for bad in (-1, float("nan"), float("inf"), True, "4", None):
        with pytest.raises(ConfigError, match="extra_suppression must be a distance"):
            check_extra_suppression(bad)
    assert parse_extra_suppression("4") == 4.0 and parse_extra_suppression("none") == 0.0
    for bad in ("x", "-2", "nan", ""):
        with pytest.raises(ConfigError, match="--extra-suppression must be a distance"):
            parse_extra_suppression(bad)
