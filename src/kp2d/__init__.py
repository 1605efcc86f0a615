"""kp2d: KeyPointNet and IO-Net in one package.

KeyPointNet and IO-Net (Tang et al., *Neural Outlier Rejection for Self-Supervised Keypoint
Learning*, ICLR 2020) — training, HPatches evaluation, inference and export in one package.
"""

from kp2d.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ImageNotFoundError,
    InputError,
    InputTypeError,
    Kp2dError,
    RunFolderInUse,
)
from kp2d.features.dense import KeyPointNetOutput
from kp2d.features.extraction import extract
from kp2d.features.keypoints import Keypoints
from kp2d.features.matching import estimate_homography, match
from kp2d.io.images import load_image
from kp2d.models import IONet, KeyPointNet
from kp2d.tracking import TrackedFrame, track

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "IONet",
    "ImageNotFoundError",
    "InputError",
    "InputTypeError",
    "KeyPointNet",
    "KeyPointNetOutput",
    "Keypoints",
    "Kp2dError",
    "RunFolderInUse",
    "TrackedFrame",
    "__version__",
    "estimate_homography",
    "extract",
    "load_image",
    "match",
    "track",
]
