"""The ``precision`` inference setting: bf16 copies a network builds for itself, and who follows them."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import kp2d.runtime
from kp2d.config import load_config
from kp2d.deploy.backends import load_backend
from kp2d.errors import CheckpointError, ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import extract, resolve_backend, resolved_precision
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.io.inference import InferenceSettings, check_precision, inference_settings_from
from kp2d.models.keypoint_net import load_keypoint_net


@pytest.fixture
def net(random_net):
    """A private copy (tests change its settings and weights)."""
    return copy.deepcopy(random_net)


def _with_precision(net, precision):
    net.inference_settings = dataclasses.replace(net.inference_settings, precision=precision)
    return net


def test_the_setting_parses_and_labels():
    assert InferenceSettings().precision == "fp32" and InferenceSettings().to_entry() == {"scale_factor": 1.0}
    settings = inference_settings_from({"scale_factor": 3, "precision": "AUTO"}, "f.ckpt")
    assert settings.precision == "auto"
    assert settings.to_entry() == {"scale_factor": 3.0, "precision": "auto"}
    assert settings.label() == " (input x3, auto)"
    assert settings.label("bf16") == " (input x3, bf16)" and settings.label("fp32") == " (input x3)"
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        InferenceSettings(precision="fp16")


def test_a_bad_precision_in_a_file_is_a_checkpoint_error(random_net, tmp_path):
    path = tmp_path / "bad.ckpt"
    save_checkpoint(path, load_config("v4"), random_net, inference={"scale_factor": 2.0, "precision": 16})
    with pytest.raises(CheckpointError, match=r"bad.ckpt: inference.precision must be one of .*got 16"):
        load_checkpoint(path)


def test_a_file_records_the_precision(random_net, tmp_path):
    path = tmp_path / "auto.ckpt"
    save_checkpoint(path, load_config("v4"), random_net, inference={"scale_factor": 2.0, "precision": "auto"})
    assert load_keypoint_net(path).inference_settings == InferenceSettings(2.0, precision="auto")


def test_fp32_is_the_plain_network(net):
    assert net.default_backend() is None and net.default_backend("fp32") is None
    assert resolve_backend(net) is None and resolved_precision(net) == "fp32"
    assert resolved_precision(net, "bf16") == "bf16"


def test_bf16_builds_one_copy_and_rebuilds_it_when_the_weights_change(net):
    backend = net.default_backend("bf16")
    assert backend.name == "torch-bf16" and backend.details["autocast"] == "torch.bfloat16"
    assert net.default_backend("bf16") is backend  # cached
    with torch.no_grad():
        net.convDb.weight.mul_(2.0)  # an in-place update, as an optimizer step makes
    rebuilt = net.default_backend("bf16")
    assert rebuilt is not backend and net.default_backend("bf16") is rebuilt


def test_auto_is_bf16_only_where_the_cpu_has_it(net, monkeypatch):
    monkeypatch.setattr(kp2d.runtime, "cpu_has_fast_bf16", lambda flags=None: False)
    fused = net.default_backend("auto")  # elsewhere fp32, BatchNorm folded: the fast fp32 path
    assert fused.name == "torch-fused" and fused.details["autocast"] is None
    assert net.default_backend("auto") is fused and resolved_precision(net, "auto") == "fp32"
    monkeypatch.setattr(kp2d.runtime, "cpu_has_fast_bf16", lambda flags=None: True)
    assert net.default_backend("auto").name == "torch-bf16"


def test_the_fused_fp32_copy_finds_the_plain_networks_keypoints(net, image, monkeypatch):
    monkeypatch.setattr(kp2d.runtime, "cpu_has_fast_bf16", lambda flags=None: False)
    plain = extract(net, image, top_k=50, precision="fp32")
    fused = extract(net, image, top_k=50, precision="auto")
    torch.testing.assert_close(fused.keypoints, plain.keypoints, atol=1e-3, rtol=0)
    torch.testing.assert_close(fused.descriptors, plain.descriptors, atol=1e-4, rtol=0)


def test_a_network_in_another_dtype_runs_as_it_is(net):
    assert net.double().default_backend("bf16") is None


def test_extract_follows_the_recorded_precision(net, image):
    by_backend = extract(net, image, top_k=50, backend=load_backend("torch-bf16", net))
    plain = extract(net, image, top_k=50)
    _with_precision(net, "bf16")
    recorded = extract(net, image, top_k=50)
    # the same arithmetic as the torch-bf16 backend, and not the plain network's
    assert torch.equal(recorded.keypoints, by_backend.keypoints)
    assert torch.equal(recorded.descriptors, by_backend.descriptors)
    assert not torch.equal(recorded.descriptors, plain.descriptors)
    forced = extract(net, image, top_k=50, precision="fp32")  # an explicit option overrides the file
    assert torch.equal(forced.keypoints, plain.keypoints)
    assert torch.equal(forced.descriptors, plain.descriptors)
    assert torch.equal(net.extract(image, top_k=50, precision="bf16").keypoints, by_backend.keypoints)


def test_a_backend_and_a_precision_together_are_refused(net, image):
    with pytest.raises(ConfigError, match="give a backend or a precision, not both"):
        extract(net, image, backend=load_backend("torch-fused", net), precision="fp32")
    with pytest.raises(ConfigError, match="precision must be one of"):
        extract(net, image, precision="half")


def test_the_hpatches_detector_follows_the_precision(net):
    images = (torch.rand(1, 64, 96, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    images = images.numpy()
    plain = KeyPointNetDetector(net)
    assert plain.precision == "fp32"
    _with_precision(net, "bf16")
    recorded = KeyPointNetDetector(net)
    assert recorded.precision == "bf16"
    assert KeyPointNetDetector(net, precision="fp32").precision == "fp32"
    bf16_rows, bf16_desc = recorded(images)[0]
    fp32_rows, fp32_desc = plain(images)[0]
    assert bf16_rows.shape == fp32_rows.shape
    assert abs(bf16_rows[:, :2] - fp32_rows[:, :2]).max() < 0.1  # fp32 location head: sub-pixel agreement
    assert abs(bf16_desc - fp32_desc).max() > 0  # the trunk ran in bf16
