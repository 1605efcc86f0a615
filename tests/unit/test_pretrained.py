"""Shipped weights: made from a checkpoint, loaded by name or path, same outputs as the source checkpoint."""

from __future__ import annotations

import pytest
import torch

from kp2d.config import load_config
from kp2d.deploy.shipping import make_pretrained, reference_error, reference_image
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint, training_steps
from kp2d.io.weights import list_pretrained
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import load_keypoint_net


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    """A V4 training checkpoint with random weights and non-trivial BatchNorm statistics."""
    config = load_config("v4")
    torch.manual_seed(0)
    net = KeyPointNet(do_upsample=True, do_cross=True).train()
    with torch.no_grad():
        net(torch.rand(2, 3, 64, 96))  # running statistics move away from (0, 1)
    path = tmp_path_factory.mktemp("ckpt") / "v4_source.ckpt"
    save_checkpoint(path, config, net, step=123, epoch=2)
    return path


@pytest.mark.slow
# fp32: CPU models load channels-last, whose convolutions round differently from the contiguous source's
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float16, 5e-2)])
def test_shipped_file_reproduces_its_checkpoint(source_checkpoint, tmp_path, dtype, tolerance):
    out = make_pretrained(source_checkpoint, tmp_path / "v4.pt", dtype, {"step": 123})
    shipped = torch.load(out, map_location="cpu", weights_only=True)
    assert set(shipped) == {"config", "state_dict", "provenance", "reference", "checksum"}
    assert shipped["config"]["model"]["params"]["do_upsample"] is True
    floats = [v for v in shipped["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == dtype for v in floats)
    # the original-format loader reads it; the outputs are the source checkpoint's
    net = load_keypoint_net(out)
    source = load_keypoint_net(source_checkpoint)
    image = reference_image().float() / 255.0
    with torch.inference_mode():
        got, want = net.describe(image), source.describe(image)
    for name in ("score", "coord", "desc"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=tolerance, rtol=0)
    error = reference_error(net, shipped["reference"])
    assert max(error.values()) <= tolerance
    assert load_checkpoint(out).extra["provenance"] == {"step": 123}
    assert training_steps(load_checkpoint(out)) == 123


def test_training_steps_count_the_run_a_checkpoint_was_fine_tuned_from(source_checkpoint, tmp_path):
    net = load_keypoint_net(source_checkpoint)
    tuned = tmp_path / "tuned.ckpt"
    save_checkpoint(tuned, load_config("v4"), net, step=40, init_from={"source": "v4", "steps_before": 2500})
    assert training_steps(load_checkpoint(tuned)) == 2540
    shipped = make_pretrained(tuned, tmp_path / "v4.pt", provenance={"step": 40, "steps_before": 2500})
    assert training_steps(load_checkpoint(shipped)) == 2540
    assert training_steps(load_checkpoint(source_checkpoint)) == 123


def test_reference_image_is_a_fixed_photo():
    image = reference_image()
    assert image.shape == (1, 3, 64, 96) and image.dtype == torch.uint8
    assert torch.equal(image, reference_image()) and image.float().std() > 20


@pytest.mark.parametrize(
    "name", list_pretrained() or [pytest.param("v4", marks=pytest.mark.skip("no weights shipped"))]
)
def test_every_shipped_model_gives_its_checkpoint_outputs(name):
    """``from_pretrained(name)`` computes what the training checkpoint it was made from computed."""
    net = KeyPointNet.from_pretrained(name)
    from importlib import resources

    shipped = torch.load(str(resources.files("kp2d") / "weights" / f"{name}.pt"), weights_only=True)
    error = reference_error(net, shipped["reference"])
    assert error["score"] < 2e-2 and error["coord"] < 0.25 and error["desc"] < 5e-2, error


def test_devices_are_resolved_and_a_missing_one_is_a_kp2d_error(source_checkpoint):
    """``from_pretrained(..., device="cuda")`` on a CPU build was torch's raw AssertionError."""
    from kp2d.errors import Kp2dError

    for device in ("cpu", torch.device("cpu"), "auto"):
        assert load_keypoint_net(source_checkpoint, device).training is False
    if not torch.cuda.is_available():
        with pytest.raises(Kp2dError, match="CUDA is not available"):
            KeyPointNet.from_pretrained(str(source_checkpoint), device="cuda")
    with pytest.raises(Kp2dError, match="unknown device 'gpu'"):
        load_keypoint_net(source_checkpoint, "gpu")
