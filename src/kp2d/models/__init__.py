"""Networks: :class:`KeyPointNet` and :class:`IONet`."""

from kp2d.models.io_net import IONet
from kp2d.models.keypoint_net import KeyPointNet, normalize_image

__all__ = ["IONet", "KeyPointNet", "normalize_image"]
