"""Static int8 quantisation of the exported ONNX graph, calibrated on photos."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from kp2d.data.image_folder import list_images
from kp2d.errors import ConfigError, DataError
from kp2d.io.imageio import read_image_rgb
from kp2d.io.images import to_network_channels

__all__ = ["DEFAULT_FLOAT_LAYERS", "load_calibration_images", "quantize_int8"]

log = logging.getLogger(__name__)


#: Convolutions left in float in the int8 graph: the score and location outputs (cheap: 1 and 2 channels).
DEFAULT_FLOAT_LAYERS = ("convDb", "convPb")

CALIBRATION_SIZE = (320, 240)  # (W, H) the calibration photos are resized to


def load_calibration_images(
    folder: str | Path, count: int = 32, size: tuple[int, int] = CALIBRATION_SIZE
) -> torch.Tensor:
    """``count`` photos of ``folder`` (evenly spread over the sorted file list), RGB, resized to ``size``.

    The photos are found and read as training photos are (:func:`kp2d.data.image_folder.list_images`:
    recursive, hidden files skipped; :func:`~kp2d.io.imageio.read_image_rgb`).

    Returns:
        ``(N, 3, H, W)`` float32 in [0, 1], ``(W, H) = size``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"calibration folder not found: {folder}")
    if count <= 0:
        raise ConfigError(f"calibration count must be positive, got {count}")
    files = list_images(folder)
    picks = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    images = []
    for index in dict.fromkeys(picks.tolist()):
        rgb = cv2.resize(read_image_rgb(files[index]), size, interpolation=cv2.INTER_LINEAR)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
    return torch.stack(images)

_CALIBRATION_RANGE_SLACK = 1e-3


def _iter_images(images: torch.Tensor | Sequence[torch.Tensor]) -> Iterator[np.ndarray]:
    """Calibration images one at a time as ``(1, 3, H, W)`` float32 arrays in [0, 1].

    uint8 images are divided by 255; float images must already be in [0, 1] (ConfigError otherwise: a
    graph calibrated on 0-255 values would quantise real inputs to a handful of levels).
    """
    for index, image in enumerate(images):
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        elif not image.is_floating_point():
            raise ConfigError(
                f"calibration image {index}: unsupported dtype {image.dtype} (use uint8 or float in [0, 1])"
            )
        array = image.detach().float().cpu().numpy()
        if array.size:
            low, high = float(array.min()), float(array.max())  # NaN anywhere makes both NaN
            if not (-_CALIBRATION_RANGE_SLACK <= low and high <= 1 + _CALIBRATION_RANGE_SLACK):
                raise ConfigError(
                    f"calibration image {index}: float values must be in [0, 1], got [{low:.3g}, {high:.3g}]"
                    " (divide 0-255 images by 255)"
                )
        yield np.ascontiguousarray(array[None] if array.ndim == 3 else array)


class _CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over images, one ``(1, 3, H, W)`` at a time."""

    def __init__(self, images: Iterable[np.ndarray]) -> None:
        self._images = list(images)
        self._iterator = iter(self._images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {"image": image}

    def rewind(self) -> None:
        self._iterator = iter(self._images)


def _conv_nodes_of(model_path: Path, layers: Sequence[str]) -> list[str]:
    """Names of the Conv nodes whose weight is ``<prefix>.<layer>.weight`` for one of ``layers``."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    wanted = {f"{layer}.weight" for layer in layers}
    names = []
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = node.input[1]
            if any(weight == w or weight.endswith("." + w) for w in wanted):
                names.append(node.name)
    found = len(names)
    if found != len(wanted):
        raise ConfigError(f"float layers {sorted(layers)}: found {found} matching Conv nodes in {model_path}")
    return names

_QUANTIZED_OPS = ("Conv", "MaxPool", "LeakyRelu", "Concat", "DepthToSpace")

_FEATURE_MAP_OPS = {"Conv", "MaxPool", "LeakyRelu", "Concat", "DepthToSpace", "Relu"}


def _non_feature_nodes(model_path: Path) -> list[str]:
    """Nodes of a quantisable type that do not join feature maps, e.g. the Concat that stacks ``(x, y)``.

    Quantising those would round the keypoint coordinates to 1/255 of the image width. A node joins
    feature maps when every input is produced by a convolution-path op.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type in _QUANTIZED_OPS
        and node.op_type != "Conv"
        and not all(producer.get(name) in _FEATURE_MAP_OPS for name in node.input if name)
    ]


def _fit_to_graph(images: Iterable[np.ndarray], graph_path: Path) -> Iterator[np.ndarray]:
    """Calibration images ``(1, 3, H, W)`` as the graph takes them.

    Its channels (a grayscale network gets the luma) and, for a fixed-size graph (``kp2d export
    --static``), its size (bilinear).
    """
    import onnx

    arrays = list(images)  # checked (_iter_images) before the graph is read
    if not arrays:
        return
    dims = onnx.load(str(graph_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    channels, height, width = (dim.dim_value for dim in dims[1:4])  # 0 where dynamic
    for array in arrays:
        image = torch.from_numpy(array)
        if channels:
            image = to_network_channels(image, channels)
        if height and width and tuple(image.shape[-2:]) != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)
        yield np.ascontiguousarray(image.numpy())


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_images: torch.Tensor | Sequence[torch.Tensor],
    float_layers: Sequence[str] = DEFAULT_FLOAT_LAYERS,
    method: str = "percentile",
) -> Path:
    """Static int8 quantisation of an exported KeyPointNet graph with ONNX Runtime.

    QDQ format, symmetric per-channel int8 weights, uint8 activations (the u8s8 pair that uses
    AVX512-VNNI / AVX-VNNI dot products). Convolutions, poolings, LeakyReLU and the concat/pixel-shuffle
    of the descriptor head are quantised; the convolutions named in ``float_layers`` (by default the
    score and location outputs, 1 and 2 channels: nearly free in float) and everything after the
    convolutions (sigmoid, tanh, the ``(x, y)`` coordinates, descriptor sampling and normalisation)
    stay float32. Calibration ``percentile`` clips activation ranges at the 99.999th percentile.

    Args:
        fp32_path: graph written by :func:`kp2d.deploy.onnx.export_onnx`.
        int8_path: where to write the quantised graph.
        calibration_images: ``(N, 3, H, W)`` or a sequence of ``(3, H, W)``/``(1, 3, H, W)``, float in
            [0, 1] or uint8 (divided by 255).
        float_layers: conv modules kept in float.
        method: calibration ``minmax``, ``percentile`` or ``entropy``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ConfigError(f"unknown calibration method '{method}' (choose from {', '.join(methods)})")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    reader = _CalibrationReader(_fit_to_graph(_iter_images(calibration_images), fp32_path))
    if not reader._images:
        raise DataError("no calibration images")

    with tempfile.TemporaryDirectory(prefix="kp2d-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = _conv_nodes_of(prepared, float_layers) if float_layers else []
        excluded += _non_feature_nodes(prepared)
        extra_options = {"CalibTensorRangeSymmetric": False, "CalibMovingAverage": False}
        if method == "percentile":
            extra_options["CalibPercentile"] = 99.999
        chatter = io.StringIO()  # the calibrator prints its progress
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(prepared),
                str(int8_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=excluded,
                op_types_to_quantize=list(_QUANTIZED_OPS),
                extra_options=extra_options,
            )
        log.debug("%s", chatter.getvalue().strip())
    log.info("int8 graph %s (float layers: %s, %s calibration)", int8_path, ", ".join(float_layers), method)
    return int8_path
