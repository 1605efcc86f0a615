"""Bicubic enlargement of the network's input: values by hand, clamping, shrinking untouched, the setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d.config import load_config
from kp2d.errors import ConfigError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.extraction import extract, rescale_images, rotate_images
from kp2d.io.checkpoint import save_checkpoint
from kp2d.io.inference import InferenceSettings, check_interpolation, model_interpolation
from kp2d.models.keypoint_net import load_keypoint_net


def _keys(t: float, a: float = -0.75) -> float:
    """The cubic convolution kernel (Keys, ``a = -0.75`` as PyTorch's bicubic) at distance ``t``."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def _step(columns: int = 8, edge: int = 4) -> torch.Tensor:
    """``(1, 1, 4, columns)``: 0 left of column ``edge``, 1 from it on."""
    row = (torch.arange(columns) >= edge).double()
    return row.expand(1, 1, 4, columns).clone()


@pytest.mark.parametrize(("sampler", "tolerance"), [("opencv", 1e-5), ("torch", 1e-12)])
def test_bicubic_enlargement_by_hand(sampler, tolerance):
    """x2: output column j samples x = (j + 0.5) / 2 - 0.5; across a step the kernel's weights add up.

    A CPU tensor is sampled by OpenCV; one that needs gradients by PyTorch: the same kernel.
    """
    step = _step().requires_grad_(sampler == "torch")
    out = rescale_images(step, 2.0, "bicubic")[0, 0, 0].detach()
    # column 7 samples x = 3.25: taps 2..5 at distances 1.25, 0.25, 0.75, 1.75; the step is at 4
    assert out[7].item() == pytest.approx(_keys(0.75) + _keys(1.75), abs=tolerance)  # 0.2265625
    assert out[8].item() == pytest.approx(_keys(0.25) + _keys(1.25), abs=tolerance)  # 0.7734375
    # column 6 samples x = 2.75: only the tap at 4 (distance 1.25) is lit, a negative weight: clamped to 0
    assert _keys(1.25) < 0 and out[6].item() == 0.0
    # column 9 samples x = 4.25: 1 - the weight of the dark tap at 3 (distance 1.25): overshoot, clamped
    assert 1 - _keys(1.25) > 1 and out[9].item() == 1.0
    # the steeper edge: columns 7 and 8 straddle it (bilinear 0.25 and 0.75)
    bilinear = rescale_images(_step(), 2.0)[0, 0, 0]
    assert (out[8] - out[7]).item() > (bilinear[8] - bilinear[7]).item() == pytest.approx(0.5)


@pytest.mark.parametrize("size", [(24, 32), (37, 53)])
@pytest.mark.parametrize("angle", [0.0, 45.0, -30.0])
def test_opencv_samples_as_torch_does(size, angle):
    """OpenCV's bicubic resize and warp (the CPU path) against PyTorch's (taken by a tensor needing
    gradients), a batch of two: the same to within OpenCV's 1/32-pixel sample grid."""
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    needs_grad = images.clone().requires_grad_(True)
    out_size = (round(size[0] * 2.8), round(size[1] * 2.8))
    for fast, reference in (
        (rescale_images(images, 2.8, "bicubic"), rescale_images(needs_grad, 2.8, "bicubic")),
        (
            rotate_images(images, angle, out_size, "bicubic"),
            rotate_images(needs_grad, angle, out_size, "bicubic"),
        ),
    ):
        assert fast.shape == (2, 3, *out_size) and fast.dtype == torch.float64
        torch.testing.assert_close(fast, reference.detach(), atol=2e-4, rtol=0)
    half = images.bfloat16()
    assert rotate_images(half, angle, out_size, "bicubic").dtype == torch.bfloat16


def test_bicubic_keeps_a_flat_image_and_the_range():
    """The kernel's weights sum to 1: a flat image stays flat; noise stays in [0, 1]."""
    flat = torch.full((1, 1, 8, 16), 0.6, dtype=torch.float64)
    torch.testing.assert_close(rescale_images(flat, 3.0, "bicubic"), flat.new_full((1, 1, 24, 48), 0.6))
    noise = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    enlarged = rescale_images(noise, 2.8, "bicubic")
    assert enlarged.shape == (2, 3, 56, 84) and enlarged.min() >= 0 and enlarged.max() <= 1
    half = rescale_images(noise.bfloat16(), 2.0, "bicubic")
    assert half.dtype == torch.bfloat16


def test_shrinking_and_the_same_size_ignore_the_interpolation():
    noise = torch.rand(1, 3, 40, 60, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rescale_images(noise, 0.5, "bicubic"), rescale_images(noise, 0.5))
    assert rescale_images(noise, 1.0, "bicubic") is noise


def test_a_turned_copy_at_zero_degrees_is_the_bicubic_enlargement():
    """The turned copy's grid samples where the enlargement does (inside, away from the zero padding)."""
    noise = torch.rand(1, 1, 24, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    turned = rotate_images(noise, 0.0, (48, 64), "bicubic")
    enlarged = rescale_images(noise, 2.0, "bicubic")
    torch.testing.assert_close(turned[..., 4:-4, 4:-4], enlarged[..., 4:-4, 4:-4], atol=1e-9, rtol=0)
    assert turned.min() >= 0 and turned.max() <= 1
    assert not torch.allclose(turned, rotate_images(noise, 0.0, (48, 64)))


def test_the_setting_is_checked_recorded_and_labelled():
    assert check_interpolation(" Bicubic ") == "bicubic"
    with pytest.raises(ConfigError, match="--interpolation must be one of bilinear, bicubic, got 'area'"):
        check_interpolation("area", "--interpolation")
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        rescale_images(torch.zeros(1, 1, 8, 8), 2.0, "nearest")
    settings = InferenceSettings(2.8, (1.25,), interpolation="bicubic")
    assert settings.to_entry() == {"scale_factor": 2.8, "extra_scales": [1.25], "interpolation": "bicubic"}
    assert settings.label() == " (input x2.8+x1.25 bicubic)"
    assert InferenceSettings(1.0, (), (45,), interpolation="bicubic").label() == " (bicubic, turned 0/45)"
    assert "interpolation" not in InferenceSettings(2.0).to_entry()
    assert model_interpolation(object()) == "bilinear"
    assert model_interpolation(object(), "bicubic") == "bicubic"


def test_the_recorded_interpolation_is_the_default(random_net, tmp_path):
    """``extract``, the HPatches detector and the override: the file's bicubic unless told otherwise."""
    path = tmp_path / "bicubic.ckpt"
    entry = InferenceSettings(2.0, (), (45.0,), interpolation="bicubic").to_entry()
    save_checkpoint(path, load_config("v4"), random_net, inference=entry)
    net = load_keypoint_net(path)
    assert net.inference_settings.interpolation == "bicubic"
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(3))
    recorded = net.extract(image, top_k=None)
    given = extract(random_net, image, top_k=None, scale_factor=2.0, extra_rotations=(45,),
                    interpolation="bicubic")
    plain = net.extract(image, top_k=None, interpolation="bilinear")
    torch.testing.assert_close(recorded.keypoints, given.keypoints)
    assert recorded.keypoints.shape != plain.keypoints.shape or not torch.allclose(
        recorded.keypoints, plain.keypoints
    )
    images = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)[None]
    (rows, _), = KeyPointNetDetector(net, "cpu")(images)
    (given_rows, _), = KeyPointNetDetector(random_net, "cpu", scale_factor=2.0, extra_rotations=(45,),
                                            interpolation="bicubic")(images)
    (plain_rows, _), = KeyPointNetDetector(net, "cpu", interpolation="bilinear")(images)
    np.testing.assert_allclose(rows, given_rows, atol=1e-5)
    assert rows.shape != plain_rows.shape or not np.allclose(rows[:, :2], plain_rows[:, :2])
