"""Networks: :class:`KeyPointNet` and :class:`IONet`."""

from kp2d.models.io_net import IONet
from kp2d.models.keypoint_net import KeyPointNet, KeyPointNetOutput, normalize_image, sample_descriptors

__all__ = ["IONet", "KeyPointNet", "KeyPointNetOutput", "normalize_image", "sample_descriptors"]
