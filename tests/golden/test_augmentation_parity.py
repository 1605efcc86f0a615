"""The training warp against the original code's training batch."""

import torch

from kp2d.augmentation import warp_pair
from kp2d.geometry import warp_points

UNIT_CORNERS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])


def test_warp_reproduces_the_golden_training_batch(golden_dir):
    """The original's source image is its target sampled at H(p): our convention for H."""
    batch = torch.load(golden_dir / "training_loss.pt", weights_only=False)["batch"]
    target, source = warp_pair(batch["image"], torch.eye(3).expand(2, 3, 3), batch["homography"])
    torch.testing.assert_close(target, batch["image"], atol=1e-4, rtol=0)
    torch.testing.assert_close(source, batch["image_aug"], atol=1e-4, rtol=0)
    homography = batch["homography"].double()
    corners = warp_points(UNIT_CORNERS.double().expand(homography.shape[0], 4, 2), homography)
    # the original's patches lie inside the target too
    assert corners.abs().max() <= 1
