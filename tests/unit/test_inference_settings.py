"""Inference settings recorded in a weights file: parsed, checked, carried by the network, used by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d.config import load_config
from kp2d.deploy.shipping import make_pretrained
from kp2d.errors import CheckpointError, ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import extract, extract_with_score_map
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.io.inference import InferenceSettings, inference_settings_from, model_scale_factor
from kp2d.io.weights import DEFAULT_MODEL, list_pretrained, resolve_model_path
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import load_keypoint_net
from kp2d.tracking import track


@pytest.fixture(scope="module")
def x2_file(random_net, tmp_path_factory):
    """``random_net`` saved with ``inference: {scale_factor: 2.0}``."""
    path = tmp_path_factory.mktemp("x2") / "x2.ckpt"
    save_checkpoint(path, load_config("v4"), random_net, inference={"scale_factor": 2.0})
    return path


def _write(path, random_net, entry):
    save_checkpoint(path, load_config("v4"), random_net, inference=entry)
    return path


def test_settings_parse_and_label():
    assert inference_settings_from(None, "f.ckpt") == InferenceSettings(1.0)
    settings = inference_settings_from({"scale_factor": 2}, "f.ckpt")
    assert settings == InferenceSettings(2.0) and isinstance(settings.scale_factor, float)
    assert settings.to_entry() == {"scale_factor": 2.0}
    assert settings.label() == " (input x2)" and InferenceSettings().label() == ""
    assert InferenceSettings(0.5).label() == " (input x0.5)"
    with pytest.raises(ConfigError, match="scale_factor must be a finite number > 0"):
        InferenceSettings(0.0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"scale_factor": -1}, "inference.scale_factor must be a finite number > 0, got -1"),
        ({"scale_factor": float("nan")}, "inference.scale_factor must be a finite number > 0, got nan"),
        ({"scale_factor": "2"}, "inference.scale_factor must be a number > 0, got '2'"),
        ({"scale_factor": True}, "inference.scale_factor must be a number > 0, got True"),
        (
            {"scale": 2.0},
            "unknown inference setting scale (known: scale_factor, extra_scales, extra_rotations, precision, "
            "extra_weight, extra_suppression, descriptor_sampling, interpolation)",
        ),
        (
            {"scale_factor": 2.0, "interpolation": "nearest"},
            "inference.interpolation must be one of bilinear, bicubic, got 'nearest'",
        ),
        ([2.0], "'inference' must be a mapping, got list"),
    ],
)
def test_bad_settings_are_a_checkpoint_error_naming_the_file(random_net, tmp_path, entry, message):
    path = _write(tmp_path / "bad.ckpt", random_net, entry)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == f"{path}: {message}"
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_keypoint_net(path)


def test_the_checksum_covers_the_settings(x2_file, tmp_path):
    raw = torch.load(x2_file, map_location="cpu", weights_only=True)
    raw["inference"]["scale_factor"] = 1.0  # edited without a new checksum
    edited = tmp_path / "edited.ckpt"
    torch.save(raw, edited)
    with pytest.raises(CheckpointError, match=r"edited.ckpt is corrupt \(checksum mismatch\)"):
        load_checkpoint(edited)


def test_the_network_carries_the_settings(random_net, x2_file):
    assert KeyPointNet().inference_settings == InferenceSettings()
    net = load_keypoint_net(x2_file)
    assert net.inference_settings == InferenceSettings(2.0)
    assert load_checkpoint(x2_file).inference == InferenceSettings(2.0)
    assert list(net.state_dict()) == list(KeyPointNet().state_dict())  # not a buffer: same keys


def test_files_without_the_entry_get_the_defaults(random_net, tmp_path):
    """The original's format (config + state_dict only) and kp2d files without ``inference``."""
    path = tmp_path / "original.ckpt"
    torch.save({"config": {"model": {"params": {}}}, "state_dict": random_net.state_dict()}, path)
    assert load_keypoint_net(path).inference_settings == InferenceSettings()
    plain = tmp_path / "plain.ckpt"
    save_checkpoint(plain, load_config("v4"), random_net)
    assert "inference" not in torch.load(plain, weights_only=True)
    assert load_keypoint_net(plain).inference_settings == InferenceSettings()


@pytest.mark.skipif(DEFAULT_MODEL not in list_pretrained(), reason="the default model is not shipped")
def test_from_pretrained_without_a_name_is_the_default_model():
    net = KeyPointNet.from_pretrained()
    shipped = load_keypoint_net(resolve_model_path(DEFAULT_MODEL))
    for (name, got), want in zip(net.state_dict().items(), shipped.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    assert net.inference_settings == load_checkpoint(resolve_model_path(DEFAULT_MODEL)).inference


def test_extract_follows_the_recorded_scale_factor(random_net, x2_file, image):
    net = load_keypoint_net(x2_file)
    random_net = random_net.to(memory_format=torch.channels_last)  # as load_keypoint_net leaves CPU models
    recorded = extract(net, image, top_k=50)
    twice = extract(random_net, image, top_k=50, scale_factor=2)
    once = extract(random_net, image, top_k=50, scale_factor=1)
    assert not torch.equal(twice.keypoints, once.keypoints)  # the test tells the two apart
    torch.testing.assert_close(recorded.keypoints, twice.keypoints, atol=0, rtol=0)
    torch.testing.assert_close(recorded.descriptors, twice.descriptors, atol=0, rtol=0)
    torch.testing.assert_close(net.extract(image, top_k=50).keypoints, twice.keypoints, atol=0, rtol=0)
    # an explicit scale factor wins over the recorded one
    torch.testing.assert_close(extract(net, image, top_k=50, scale_factor=1).keypoints, once.keypoints)
    torch.testing.assert_close(net.extract(image, top_k=50, scale_factor=1).keypoints, once.keypoints)
    # and the score map is the one of the 2x image: (128 / 8, 192 / 8) cells
    _, scores = extract_with_score_map(net, image, top_k=50)
    assert tuple(scores.shape) == (16, 24)


def test_a_module_without_settings_runs_at_scale_1(random_net, image):
    class Foreign(torch.nn.Module):
        """A network of another class: no ``inference_settings``."""

        in_channels = 3

        def __init__(self) -> None:
            super().__init__()
            self.inner = random_net

        def forward(self, x):
            return self.inner(x)

    foreign = Foreign()
    assert model_scale_factor(foreign, None) == 1.0 and model_scale_factor(foreign, 3) == 3
    torch.testing.assert_close(
        extract(foreign, image, top_k=20).keypoints, extract(random_net, image, top_k=20).keypoints
    )


def test_hpatches_detector_and_track_follow_the_setting(random_net, x2_file):
    net = load_keypoint_net(x2_file)
    assert KeyPointNetDetector(net, "cpu").scale_factor == 2.0
    assert KeyPointNetDetector(net, "cpu", scale_factor=1).scale_factor == 1.0
    assert KeyPointNetDetector(random_net, "cpu").scale_factor == 1.0
    frames = [np.full((64, 96, 3), value, np.uint8) for value in (0, 0)]
    frames[0][16:48, 24:72] = frames[1][16:48, 24:72] = 255
    recorded = [frame.keypoints for frame in track(frames, net, top_k=30, guided=False)]
    twice = [frame.keypoints for frame in track(frames, random_net, top_k=30, guided=False, scale_factor=2)]
    once = [frame.keypoints for frame in track(frames, net, top_k=30, guided=False, scale_factor=1)]
    for got, want, other in zip(recorded, twice, once, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.shape != other.shape or not np.array_equal(got, other)  # the override is taken


def test_make_pretrained_records_the_settings(x2_file, random_net, tmp_path):
    carried = make_pretrained(x2_file, tmp_path / "carried.pt")
    assert load_checkpoint(carried).inference == InferenceSettings(2.0)
    chosen = make_pretrained(x2_file, tmp_path / "chosen.pt", inference=InferenceSettings(0.5))
    assert torch.load(chosen, weights_only=True)["inference"] == {"scale_factor": 0.5}
    plain = tmp_path / "plain.ckpt"
    save_checkpoint(plain, load_config("v4"), random_net)
    assert "inference" not in torch.load(make_pretrained(plain, tmp_path / "p.pt"), weights_only=True)


def test_every_model_default_is_default_model(monkeypatch):
    """from_pretrained(), kp2d.track and the CLIs' --model all name kp2d.io.weights.DEFAULT_MODEL."""
    import inspect

    import kp2d.models.keypoint_net
    from kp2d.cli import build_parser

    parser = build_parser()
    for argv in (["detect", "a"], ["match", "a", "b"], ["track", "v.avi"], ["export", "--onnx", "o"]):
        assert parser.parse_args(argv).model == DEFAULT_MODEL, argv
    assert inspect.signature(KeyPointNet.from_pretrained).parameters["name_or_path"].default is None
    asked = []
    monkeypatch.setattr(kp2d.models.keypoint_net, "load_keypoint_net", lambda name, _: asked.append(name))
    KeyPointNet.from_pretrained()
    assert asked == [DEFAULT_MODEL]
