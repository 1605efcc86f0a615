"""Extraction at several input scales (``extra_scales``): pooled by score, recorded, parsed, evaluated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d.config import load_config
from kp2d.errors import ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import extract, extract_with_score_map
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.io.inference import InferenceSettings, check_extra_scales, parse_extra_scales
from kp2d.models.keypoint_net import load_keypoint_net


@pytest.fixture(scope="module")
def x2_x1_file(random_net, tmp_path_factory):
    """``random_net`` saved with ``inference: {scale_factor: 2.0, extra_scales: [1.0]}``."""
    path = tmp_path_factory.mktemp("x2x1") / "x2x1.ckpt"
    entry = InferenceSettings(2.0, (1.0,)).to_entry()
    save_checkpoint(path, load_config("v4"), random_net, inference=entry)
    return path


def test_settings_entry_label_and_checks():
    settings = InferenceSettings(2.0, [1, 1.0, 2.0, 0.5])  # duplicates and the main scale drop out
    assert settings.extra_scales == (1.0, 0.5) and settings.scales == (2.0, 1.0, 0.5)
    assert settings.to_entry() == {"scale_factor": 2.0, "extra_scales": [1.0, 0.5]}
    assert settings.label() == " (input x2+x1+x0.5)"
    assert InferenceSettings(1.0, (0.5,)).label() == " (input x1+x0.5)"
    assert InferenceSettings(2.0).to_entry() == {"scale_factor": 2.0}  # old files stay as they were
    for bad in ("1", 1.0, [0], [float("nan")], [True]):
        with pytest.raises(ConfigError, match="extra_scales"):
            check_extra_scales(bad)


def test_parse_extra_scales():
    assert parse_extra_scales("1") == (1.0,)
    assert parse_extra_scales("1, 0.5") == (1.0, 0.5)
    assert parse_extra_scales("none") == () == parse_extra_scales("")
    for bad in ("x", "1,,2", "-1", "0"):
        with pytest.raises(ConfigError, match="--extra-scales must be numbers > 0"):
            parse_extra_scales(bad)


def test_pooled_keypoints_are_the_best_of_every_scale(random_net, image):
    net = random_net.to(memory_format=torch.channels_last)
    twice = extract(net, image, top_k=None, scale_factor=2)
    once = extract(net, image, top_k=None, scale_factor=1)
    pooled = extract(net, image, top_k=40, scale_factor=2, extra_scales=(1,))
    union_scores = torch.cat([twice.scores, once.scores])
    torch.testing.assert_close(pooled.scores, union_scores.sort(descending=True).values[:40], atol=0, rtol=0)
    # every pooled keypoint is one of a single scale's, with that scale's descriptor (to float rounding:
    # the few pooled keypoints are described cell by cell, all of a scale's by the dense map)
    union_points = torch.cat([twice.keypoints, once.keypoints])
    union_descs = torch.cat([twice.descriptors, once.descriptors])
    for point, desc in zip(pooled.keypoints, pooled.descriptors, strict=True):
        index = int((union_points - point).norm(dim=1).argmin())
        assert torch.equal(union_points[index], point)
        torch.testing.assert_close(union_descs[index], desc, atol=1e-6, rtol=0)
    assert len(pooled) == 40 and pooled.image_size == (96, 64)
    # 1x holds 8 * 12 = 96 cells less its border; with all of them kept both scales are there in full
    everything = extract(net, image, top_k=None, scale_factor=2, extra_scales=(1,))
    assert len(everything) == len(twice) + len(once)


def test_only_the_pooled_keypoints_are_described(random_net, image, monkeypatch):
    """Each run selects its top 40, the pooling keeps 40 of the 80: only those reach the descriptor head."""
    net = random_net.to(memory_format=torch.channels_last)
    want = extract(net, image, top_k=40, scale_factor=2, extra_scales=(1,))
    described = []
    original = net.descriptors_at

    def counting(features, batch_index, points, *args, **kwargs):
        described.append(len(points))
        return original(features, batch_index, points, *args, **kwargs)

    monkeypatch.setattr(net, "descriptors_at", counting)
    got = extract(net, image, top_k=40, scale_factor=2, extra_scales=(1,))
    assert len(described) == 2 and sum(described) == len(got) == 40
    torch.testing.assert_close(got.descriptors, want.descriptors, atol=0, rtol=0)


def test_the_recorded_extra_scales_are_the_default(random_net, x2_x1_file, image):
    net = load_keypoint_net(x2_x1_file)
    assert net.inference_settings == InferenceSettings(2.0, (1.0,))
    assert load_checkpoint(x2_x1_file).inference == InferenceSettings(2.0, (1.0,))
    random_net = random_net.to(memory_format=torch.channels_last)
    want = extract(random_net, image, top_k=60, scale_factor=2, extra_scales=(1,))
    got = net.extract(image, top_k=60)
    torch.testing.assert_close(got.keypoints, want.keypoints, atol=0, rtol=0)
    single = extract(random_net, image, top_k=60, scale_factor=2)
    torch.testing.assert_close(extract(net, image, top_k=60, extra_scales=()).keypoints, single.keypoints)
    # the score map stays the main scale's: (128 / 8, 192 / 8) cells
    _, scores = extract_with_score_map(net, image, top_k=60)
    assert tuple(scores.shape) == (16, 24)


def test_a_scale_too_small_for_the_image_is_left_out(random_net):
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(4))
    alone = extract(random_net, image, top_k=None, scale_factor=1)
    with_small = extract(random_net, image, top_k=None, scale_factor=1, extra_scales=(0.5,))  # 20x24
    torch.testing.assert_close(with_small.keypoints, alone.keypoints, atol=0, rtol=0)


def test_hpatches_detector_pools_every_scale(random_net, x2_x1_file):
    images = np.random.default_rng(5).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    pooled = KeyPointNetDetector(load_keypoint_net(x2_x1_file), "cpu")
    assert pooled.scale_factor == 2.0 and pooled.extra_scales == (1.0,)
    twice = KeyPointNetDetector(random_net, "cpu", scale_factor=2)(images)
    once = KeyPointNetDetector(random_net, "cpu", scale_factor=1)(images)
    for (rows, descs), (rows2, descs2), (rows1, descs1) in zip(pooled(images), twice, once, strict=True):
        np.testing.assert_allclose(rows, np.concatenate([rows2, rows1]), atol=1e-5)
        np.testing.assert_allclose(descs, np.concatenate([descs2, descs1]), atol=1e-5)
    assert KeyPointNetDetector(load_keypoint_net(x2_x1_file), "cpu", extra_scales=()).extra_scales == ()
