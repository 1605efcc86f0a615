"""KeyPointNet and IO-Net against the original code's outputs and state-dict keys."""

import pytest
import torch

from kp2d.models import IONet, KeyPointNet
from kp2d.models.keypoint_net import normalize_image


@pytest.mark.parametrize(
    ("variant", "do_upsample", "do_cross"), [("v4", True, True), ("v0", False, False)]
)
def test_keypointnet_matches_golden(golden_forward, variant, do_upsample, do_cross):
    net = KeyPointNet(do_upsample=do_upsample, do_cross=do_cross)
    net.load_state_dict(golden_forward["state_dict"])  # original key layout, loaded unchanged
    net.eval()
    expected = golden_forward[variant]
    with torch.no_grad():
        out = net.describe(golden_forward["image"])
    torch.testing.assert_close(out.score, expected["score"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.coord, expected["coord"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.desc, expected["desc"], atol=1e-4, rtol=0)


def test_normalization_matches_golden(golden_forward):
    torch.testing.assert_close(normalize_image(golden_forward["image"]), golden_forward["normalized_input"])


def test_ionet_shapes_and_original_keys(golden_dir):
    golden = torch.load(golden_dir / "training_loss.pt", weights_only=False)
    net = IONet()
    net.load_state_dict(golden["io_net_state_dict"])
    out = net.eval()(torch.randn(2, 5, 300, 1))
    assert out.shape == (2, 1, 300, 1)
    with pytest.raises(ValueError, match="correspondences"):
        net(torch.randn(2, 4, 300, 1))
