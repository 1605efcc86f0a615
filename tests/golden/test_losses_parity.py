"""The training losses against the original code's losses and recall on the same batch."""

import pytest
import torch

from kp2d.config import LossConfig
from kp2d.losses import keypoint_net_losses
from kp2d.models import IONet, KeyPointNet


@pytest.fixture(scope="module")
def golden_training(golden_dir):
    return torch.load(golden_dir / "training_loss.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["v0", "v1", "v2", "v3", "v4"])
def test_total_loss_and_recall_match_golden(golden_training, golden_forward, variant):
    result = golden_training["results"][variant]
    flags = result["config"]
    weights = golden_training["weights"]
    net = KeyPointNet(do_upsample=flags["do_upsample"], do_cross=flags["do_cross"], with_dropout=False)
    net.load_state_dict(golden_forward["state_dict"])
    net.train()  # BatchNorm on batch statistics, as the golden run
    io_net = None
    if flags["with_io"]:
        io_net = IONet()
        io_net.load_state_dict(golden_training["io_net_state_dict"])
        io_net.train()
    config = LossConfig(descriptor_loss=flags["descriptor_loss"], io_selection="lowest", **weights)
    batch = golden_training["batch"]
    terms = keypoint_net_losses(
        net(batch["image_aug"]), net(batch["image"]), batch["homography"], (240, 320), config, io_net
    )
    # Tighter than the golden README's 1e-4 (we are within 1e-7): at 1e-4 the score MSE taken over the
    # cells within 4 px only, instead of every valid cell, would pass for V0, V3 and V4 (6e-5 to 8e-5 off).
    assert terms.total.item() == pytest.approx(result["loss"], rel=1e-6)
    assert terms.recall.item() == pytest.approx(result["recall"], rel=1e-6)
    terms.total.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if io_net is not None:  # the IO loss trains IO-Net and reaches KeyPointNet
        assert io_net.p_out.weight.grad is not None and io_net.p_out.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_io_selection_highest_differs_and_is_finite(golden_training, golden_forward):
    batch = golden_training["batch"]
    net = KeyPointNet(with_dropout=False)
    net.load_state_dict(golden_forward["state_dict"])
    io_net = IONet()
    io_net.load_state_dict(golden_training["io_net_state_dict"])
    source, target = net(batch["image_aug"]), net(batch["image"])
    lowest = keypoint_net_losses(source, target, batch["homography"], (240, 320), LossConfig(), io_net)
    highest = keypoint_net_losses(
        source, target, batch["homography"], (240, 320), LossConfig(io_selection="highest"), io_net
    )
    assert torch.isfinite(highest.total) and highest.io.item() != lowest.io.item()
