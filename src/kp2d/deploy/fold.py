"""BatchNorm folded into the preceding convolutions (eval-mode arithmetic, one op fewer per layer).

The functions live in :mod:`kp2d.models.fast` (the network's own bf16 path uses them); this is their
deployment-side name.
"""

from kp2d.models.fast import fold_batchnorm, fold_conv_bn

__all__ = ["fold_batchnorm", "fold_conv_bn"]
