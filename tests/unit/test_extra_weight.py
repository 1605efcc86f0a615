"""The extra scales' scores weighted before pooling (``extra_weight``): extraction, settings, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d.config import load_config
from kp2d.errors import CheckpointError, ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import extract
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.io.inference import InferenceSettings, check_extra_weight, parse_extra_weight
from kp2d.models.keypoint_net import load_keypoint_net


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A textured 64x96 RGB image in [0, 1]."""
    return torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def net(channels_last_net):
    return channels_last_net


def _union(found, weight: float):
    """Each run's keypoints (main first) with the extra runs' scores times ``weight``, best first."""
    scores = torch.cat([found[0].scores] + [item.scores * weight for item in found[1:]])
    points = torch.cat([item.keypoints for item in found])
    order = scores.argsort(descending=True, stable=True)
    return scores[order], points[order]


def test_the_extra_scale_is_weighted_before_the_top_k(net, image):
    """By hand: the pooled keypoints are the union ranked by the weighted scores, then cut to top_k."""
    main = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=())
    coarse = extract(net, image, top_k=None, scale_factor=1.0, extra_scales=())
    for weight in (1.0, 0.5, 0.01):
        scores, points = _union([main, coarse], weight)
        pooled = extract(net, image, top_k=40, scale_factor=2.0, extra_scales=(1,), extra_weight=weight)
        torch.testing.assert_close(pooled.scores, scores[:40], atol=1e-6, rtol=0)
        torch.testing.assert_close(pooled.keypoints, points[:40], atol=1e-4, rtol=0)
    # a tiny weight puts every main keypoint first: the extra scale only fills in behind them
    tiny = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(1,), extra_weight=1e-6)
    torch.testing.assert_close(tiny.keypoints[: len(main)], main.keypoints)
    assert len(tiny) == len(main) + len(coarse)


def test_the_weight_skips_turned_copies_and_one_run(net, image):
    plain = extract(net, image, top_k=None, extra_scales=(), extra_rotations=())
    alone = extract(net, image, top_k=None, extra_scales=(), extra_weight=0.5)
    assert torch.equal(alone.scores, plain.scores)
    turned = extract(net, image, top_k=None, extra_rotations=(30,))
    weighted = extract(net, image, top_k=None, extra_rotations=(30,), extra_weight=0.5)
    torch.testing.assert_close(weighted.scores, turned.scores, atol=0, rtol=0)
    torch.testing.assert_close(weighted.keypoints, turned.keypoints, atol=0, rtol=0)
    # with a scale and a turn, only the scale's scores are halved
    main = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=())
    coarse = extract(net, image, top_k=None, scale_factor=1.0, extra_scales=())
    turn = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(), extra_rotations=(30,))
    both = extract(net, image, top_k=None, scale_factor=2.0, extra_scales=(1,), extra_rotations=(30,),
                   extra_weight=0.5)
    want = turn.scores.sum() + 0.5 * coarse.scores.sum()  # turn holds the main run and the turned copy
    assert len(both) == len(turn) + len(coarse) and len(turn) > len(main)
    torch.testing.assert_close(both.scores.sum(), want)


def test_settings_check_entry_label_and_parse():
    settings = InferenceSettings(2.8, (1.25,), (), "auto", 0.9)
    assert settings.to_entry() == {"scale_factor": 2.8, "extra_scales": [1.25], "precision": "auto",
                                   "extra_weight": 0.9}
    assert settings.label() == " (input x2.8+x1.25, extra scales' scores x0.9, auto)"
    assert InferenceSettings(2.0, (), (), "fp32", 0.5).label() == " (input x2)"  # nothing to weigh
    assert InferenceSettings(2.0, (), (45,), "fp32", 0.5).label() == " (input x2, turned 0/45)"
    assert "extra_weight" not in InferenceSettings(2.0, (1.0,)).to_entry()
    assert check_extra_weight(np.float32(0.5)) == 0.5 and check_extra_weight(1) == 1.0
    for bad in (0, -1, 1.5, float("nan"), float("inf"), True, "0.9", None):
        with pytest.raises(ConfigError, match=r"extra_weight must be a number in \(0, 1\]"):
            check_extra_weight(bad)
    assert parse_extra_weight("0.9") == 0.9
    for bad in ("0", "x", "nan", "", "2"):
        with pytest.raises(ConfigError, match=r"--extra-weight must be a number in \(0, 1\]"):
            parse_extra_weight(bad)


def test_a_recorded_weight_is_the_default_everywhere(random_net, net, image, tmp_path):
    path = tmp_path / "weighted.ckpt"
    entry = InferenceSettings(2.0, (1.0,), (), "fp32", 0.25).to_entry()
    save_checkpoint(path, load_config("v4"), random_net, inference=entry)
    loaded = load_keypoint_net(path)
    assert loaded.inference_settings.extra_weight == 0.25
    want = extract(net, image, top_k=30, scale_factor=2.0, extra_scales=(1,), extra_weight=0.25)
    got = loaded.extract(image, top_k=30)
    torch.testing.assert_close(got.scores, want.scores)
    assert not torch.equal(loaded.extract(image, top_k=30, extra_weight=1.0).scores, got.scores)
    # the HPatches detector: the extra scale's cells come after the main scale's, their scores weighted
    images = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)[None]
    detector = KeyPointNetDetector(loaded, "cpu")
    assert detector.extra_weight == 0.25
    (rows, _), = detector(images)
    (plain, _), = KeyPointNetDetector(loaded, "cpu", extra_weight=1.0)(images)
    np.testing.assert_allclose(rows[:, :2], plain[:, :2])
    main = len(KeyPointNetDetector(loaded, "cpu", extra_scales=())(images)[0][0])
    np.testing.assert_allclose(rows[:main, 2], plain[:main, 2])
    np.testing.assert_allclose(rows[main:, 2], plain[main:, 2] * 0.25, rtol=1e-6)


def test_the_hpatches_detector_leaves_turned_cells_unweighted(net, image):
    """Cells come main, extra scales, turned copies; only the extra scales' scores are weighted."""
    images = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)[None]
    options = {"scale_factor": 2.0, "extra_scales": (1.0,), "extra_rotations": (30.0,)}
    (rows, _), = KeyPointNetDetector(net, "cpu", extra_weight=0.5, **options)(images)
    (plain, _), = KeyPointNetDetector(net, "cpu", extra_weight=1.0, **options)(images)
    main = len(KeyPointNetDetector(net, "cpu", scale_factor=2.0, extra_scales=())(images)[0][0])
    coarse = len(KeyPointNetDetector(net, "cpu", scale_factor=1.0, extra_scales=())(images)[0][0])
    assert len(rows) > main + coarse  # the turned copy has cells too
    np.testing.assert_allclose(rows[:, :2], plain[:, :2])
    np.testing.assert_allclose(rows[main : main + coarse, 2], plain[main : main + coarse, 2] * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(rows[:, 2], np.s_[main : main + coarse]),
                                  np.delete(plain[:, 2], np.s_[main : main + coarse]))


def test_a_bad_recorded_weight_names_the_file(random_net, tmp_path):
    path = tmp_path / "bad.ckpt"
    save_checkpoint(path, load_config("v4"), random_net, inference={"scale_factor": 2.0, "extra_weight": 0})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: inference.extra_weight must be a number in (0, 1]")
