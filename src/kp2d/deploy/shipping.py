"""Shipped weights: turn a training checkpoint into a small file under ``kp2d/weights/NAME.pt``.

A shipped file is an original-format checkpoint (``{'config', 'state_dict'}``, the state dict in fp16 by
default, about 10 MB for V4) with two more entries that the original's loaders ignore:

- ``provenance``: what it was trained on and how long (steps, wall time, hardware, data), free-form;
- ``reference``: a fixed photo ``(1, 3, 64, 96)`` uint8 and the source checkpoint's fp32 eval-mode outputs on
  it (``score``, ``coord``, ``desc`` of :meth:`KeyPointNet.describe`), so that anyone can check that the
  shipped weights still compute what the checkpoint they were made from computed
  (:func:`reference_error`, and the tests do for every shipped file).

and, when the model is meant to run otherwise than by default, ``inference`` (e.g. ``{"scale_factor":
2.0}``, :mod:`kp2d.io.inference`), which the loaders apply to the network (the original's ignore it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kp2d.io.checkpoint import load_checkpoint
from kp2d.io.files import atomic_torch_save
from kp2d.io.inference import INFERENCE_KEY, InferenceSettings
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import keypoint_net_from

__all__ = ["REFERENCE_SIZE", "make_pretrained", "reference_error", "reference_image"]

REFERENCE_SIZE = (96, 64)  # (W, H) of the reference photo


def reference_image() -> torch.Tensor:
    """scikit-image's *astronaut* resized to 96×64: ``(1, 3, 64, 96)`` uint8 RGB."""
    import cv2
    import skimage.data

    rgb = cv2.resize(skimage.data.astronaut(), REFERENCE_SIZE, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()


def _describe(net: KeyPointNet, image_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network's outputs on the reference photo, descriptors read the original code's way.

    Whatever sampling the file records, so that the reference can be checked in the original code.
    """
    device = next(net.parameters()).device
    with torch.inference_mode():
        out = net.eval().describe(image_uint8.to(device).float() / 255.0, sampling="original")
    return {name: value.float().cpu() for name, value in out._asdict().items()}


def make_pretrained(
    source: str | Path,
    out: str | Path,
    dtype: torch.dtype = torch.float16,
    provenance: dict[str, Any] | None = None,
    inference: InferenceSettings | None = None,
) -> Path:
    """Write the shipped form of the checkpoint ``source`` (see the module docstring) to ``out``.

    Floating-point tensors of the KeyPointNet state dict are stored as ``dtype`` (integer buffers such as
    BatchNorm's ``num_batches_tracked`` stay as they are); IO-Net and the optimizer state are dropped.
    ``inference``: the settings to record (``None``: the source's own, if any); defaults are not written.
    """
    checkpoint = load_checkpoint(source)
    net = keypoint_net_from(checkpoint, source)
    image = reference_image()
    state_dict = {
        key: value.detach().cpu().to(dtype) if value.is_floating_point() else value.detach().cpu()
        for key, value in net.state_dict().items()
    }
    payload = {
        "config": checkpoint.raw_config,
        "state_dict": state_dict,
        "provenance": dict(provenance or {}),
        "reference": {"image": image, **_describe(net, image)},
    }
    settings = inference if inference is not None else checkpoint.inference
    if settings != InferenceSettings():
        payload[INFERENCE_KEY] = settings.to_entry()
    atomic_torch_save(payload, out)
    return Path(out)


def reference_error(net: KeyPointNet, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest differences between ``net``'s outputs on the reference photo and the stored ones.

    Returns:
        ``{"score": max |Δscore|, "coord": max |Δcoord| px, "desc": max |Δdesc|}``.
    """
    outputs = _describe(net, reference["image"])
    return {name: float((outputs[name] - reference[name]).abs().max()) for name in ("score", "coord", "desc")}
