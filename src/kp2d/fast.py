"""Fast inference backends for :meth:`KeyPointNet.describe`, behind one interface.

``load_backend(name, model)`` returns a :class:`Backend`: a callable taking images ``(B, 3, H, W)``
float in [0, 1] (``H``, ``W`` multiples of 8) and returning a :class:`~kp2d.models.KeyPointNetOutput`
of float32 CPU-or-input-device tensors, exactly what ``model.describe`` returns up to the backend's
precision: score ``(B, 1, H/8, W/8)``, coord ``(B, 2, H/8, W/8)`` pixels ``(x, y)``, desc
``(B, 256, H/8, W/8)`` unit-norm.

============== =========================================================================================
name           what changes the arithmetic
============== =========================================================================================
torch-fp32     plain eval-mode PyTorch (the reference)
torch-fold     BatchNorm folded into the preceding convolutions (:func:`fold_batchnorm`)
torch-fused    BatchNorm folded + channels-last (NHWC) weights and activations
torch-bf16     torch-fused under bf16 autocast; the score and location output convolutions (``convDb``,
               ``convPb``) run in fp32 and the descriptor map is sampled in fp32
ort-fp32       ONNX Runtime CPU, all graph optimisations, on the exported graph (:mod:`kp2d.export`)
ort-int8       ONNX Runtime, static int8 (QDQ, per-channel int8 weights, uint8 activations),
               calibrated on photos; the score and location output convolutions, the coordinates
               and the descriptor sampling stay float32
============== =========================================================================================

The ``torch-*`` backends run on the device the model was on when they were built (inputs must be there:
:func:`kp2d.inference.extract` moves them); the ``ort-*`` backends run on the CPU and return tensors on the
input's device.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kp2d.data.image_folder import list_images
from kp2d.errors import ConfigError, DataError
from kp2d.imageio import read_image_rgb
from kp2d.inference import to_network_channels
from kp2d.models import KeyPointNet, KeyPointNetOutput

__all__ = [
    "BACKENDS",
    "DEFAULT_FLOAT_LAYERS",
    "Backend",
    "BackendDetector",
    "fold_batchnorm",
    "fold_conv_bn",
    "load_backend",
    "load_calibration_images",
    "quantize_int8",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch-fp32", "torch-fold", "torch-fused", "torch-bf16", "ort-fp32", "ort-int8")
#: Convolutions left in float in the int8 graph: the score and location outputs (cheap: 1 and 2 channels).
DEFAULT_FLOAT_LAYERS = ("convDb", "convPb")
CALIBRATION_SIZE = (320, 240)  # (W, H) the calibration photos are resized to


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    ``w' = w · γ/√(σ² + ε)``, ``b' = (b − μ) · γ/√(σ² + ε) + β`` (``b = 0`` for a conv without bias),
    computed in float64 and stored in the conv's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    dtype = conv.weight.dtype
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(var)
    bias = (bias - mean) * scale + beta

    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=dtype)
    with torch.no_grad():
        fused.weight.copy_(weight.to(dtype))
        fused.bias.copy_(bias.to(dtype))
    return fused


def fold_batchnorm(model: KeyPointNet) -> KeyPointNet:
    """A copy of ``model`` in eval mode with every ``Sequential(Conv2d, BatchNorm2d)`` replaced by one conv.

    The copy computes the same function as ``model.eval()`` (to float rounding); ``model`` is unchanged.
    The copy's state-dict keys differ (``conv1a.weight``/``conv1a.bias`` instead of ``conv1a.0.*``/
    ``conv1a.1.*``): it is for inference, not for saving.
    """
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    for name, child in list(folded.named_children()):
        if (
            isinstance(child, nn.Sequential)
            and len(child) == 2
            and isinstance(child[0], nn.Conv2d)
            and isinstance(child[1], nn.BatchNorm2d)
        ):
            setattr(folded, name, fold_conv_bn(child[0], child[1]).requires_grad_(False))
    return folded


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """A named inference function: ``backend(images (B, 3, H, W) in [0, 1]) -> KeyPointNetOutput``.

    Attributes:
        name: one of :data:`BACKENDS`.
        run: the function itself.
        details: what was built (e.g. the ONNX file, the layers kept in float), for reports.
        in_channels: the network's input channels (1: it gets the luma of RGB images).
    """

    name: str
    run: Callable[[torch.Tensor], KeyPointNetOutput]
    details: dict[str, object] = field(default_factory=dict)
    in_channels: int = 3  # the network's: a grayscale network (1) gets the luma of RGB images

    def __call__(self, images: torch.Tensor) -> KeyPointNetOutput:
        """Score ``(B, 1, Hc, Wc)``, coord ``(B, 2, Hc, Wc)``, desc ``(B, 256, Hc, Wc)``, all float32.

        DataError unless ``images`` is a float tensor ``(B, 1|3, H, W)`` (``extract`` converts other
        inputs; a uint8 tensor here would run on values 0–255).
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"a backend takes float images (B, 3, H, W) in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise DataError(
                f"a backend takes float images in [0, 1], got {images.dtype} (divide by 255, or use extract)"
            )
        return self.run(to_network_channels(images, self.in_channels))


class _Float32Conv(nn.Module):
    """A conv run in float32 even under autocast (score and location heads of the bf16 backend)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.conv(x.float())


class _Float32Output(nn.Module):
    """A conv run under autocast whose output is cast back to float32 (the descriptor output)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).float()


def _torch_backend(
    name: str, net: KeyPointNet, channels_last: bool, autocast: torch.dtype | None
) -> Backend:
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    parameter = next(net.parameters())
    device_type = parameter.device.type
    # under autocast the input stays float32 (autocast casts per op); else it takes the weights' dtype,
    # so that a model in fp16 / bf16 (``model.half()``) runs on its own dtype
    input_dtype = torch.float32 if autocast is not None else parameter.dtype

    def run(images: torch.Tensor) -> KeyPointNetOutput:
        images = images.to(input_dtype)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        cast = (
            torch.autocast(device_type=device_type, dtype=autocast) if autocast is not None else nullcontext()
        )
        with torch.inference_mode(), cast:
            out = net.describe(images)
        return KeyPointNetOutput(*(t.float().contiguous() for t in out))

    details = {"channels_last": channels_last, "autocast": str(autocast) if autocast else None}
    return Backend(name, run, details, net.in_channels)


def _bf16_net(model: KeyPointNet) -> KeyPointNet:
    net = fold_batchnorm(model).float()  # autocast wants fp32 weights (a .half() model's are not)
    net.convDb = _Float32Conv(net.convDb)
    net.convPb = _Float32Conv(net.convPb)
    net.convFbb = _Float32Output(net.convFbb)
    return net


def _ort_session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _ort_backend(
    name: str, path: Path, threads: int | None, details: dict[str, object], in_channels: int
) -> Backend:
    session = _ort_session(path, threads)

    def run(images: torch.Tensor) -> KeyPointNetOutput:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        score, coord, desc = session.run(None, {"image": array})
        return KeyPointNetOutput(
            *(torch.from_numpy(t).to(images.device) for t in (score, coord, desc))
        )

    details = {"onnx": str(path), "threads": threads or torch.get_num_threads(), **details}
    return Backend(name, run, details, in_channels)


def load_backend(
    name: str,
    model: KeyPointNet,
    calibration_images: torch.Tensor | Sequence[torch.Tensor] | str | Path | None = None,
    *,
    threads: int | None = None,
    work_dir: str | Path | None = None,
    float_layers: Sequence[str] = DEFAULT_FLOAT_LAYERS,
    calibration_method: str = "percentile",
    calibration_count: int = 32,
    onnx_model: str | Path | None = None,
) -> Backend:
    """Build the inference backend ``name`` (see :data:`BACKENDS` and the module docstring) for ``model``.

    Args:
        name: backend name.
        model: the network (left unchanged; backends work on copies / exported graphs).
        calibration_images: for ``ort-int8``: a folder of photos (``calibration_count`` of them are
            resized to 320×240), or images ``(N, 3, H, W)`` / a sequence of ``(1, 3, H, W)``, float in
            [0, 1] or uint8 (divided by 255); other float values raise ConfigError.
        threads: ORT ``intra_op_num_threads`` (default: ``torch.get_num_threads()``, so ORT and PyTorch
            use the same number of threads).
        work_dir: where the ``.onnx`` files go (default: a temporary folder, removed once the ONNX Runtime
            session holds the graph).
        float_layers: ``ort-int8``: convolutions kept in float (names of the network's conv modules).
        calibration_method: ``ort-int8``: ``minmax``, ``percentile`` (99.999 %) or ``entropy``.
        calibration_count: ``ort-int8``: how many photos of a calibration folder to use.
        onnx_model: ``ort-*``: a graph already written by :func:`kp2d.export.export_onnx` for ``model``
            (fp32) to use instead of exporting again.

    Returns:
        A :class:`Backend`.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    if name == "ort-int8" and calibration_images is None:
        raise ConfigError("backend ort-int8 needs calibration images (a folder of training photos)")
    if name == "torch-fp32":
        return _torch_backend(name, copy.deepcopy(model).eval().requires_grad_(False), False, None)
    if name == "torch-fold":
        return _torch_backend(name, fold_batchnorm(model), False, None)
    if name == "torch-fused":
        return _torch_backend(name, fold_batchnorm(model), True, None)
    if name == "torch-bf16":
        from kp2d.runtime import cpu_has_fast_bf16

        if next(model.parameters()).device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): torch-bf16 is emulated here and "
                        "slower than torch-fused")
        return _torch_backend(name, _bf16_net(model), True, torch.bfloat16)

    with contextlib.ExitStack() as cleanup:
        if work_dir is None:  # ONNX Runtime holds the graph in memory once the session exists
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="kp2d-onnx-")))
        else:
            folder = Path(work_dir)
            folder.mkdir(parents=True, exist_ok=True)
        return _ort_model_backend(
            name, model, folder, onnx_model, calibration_images, calibration_count, float_layers,
            calibration_method, threads, keep_files=work_dir is not None,
        )


def _ort_model_backend(
    name: str,
    model: KeyPointNet,
    folder: Path,
    onnx_model: str | Path | None,
    calibration_images: torch.Tensor | Sequence[torch.Tensor] | str | Path | None,
    calibration_count: int,
    float_layers: Sequence[str],
    calibration_method: str,
    threads: int | None,
    keep_files: bool,
) -> Backend:
    """``ort-fp32`` / ``ort-int8`` with the graphs written to ``folder`` (see :func:`load_backend`)."""
    from kp2d.export import export_onnx

    if name == "ort-int8":  # read and check the calibration images before the (slow) export
        if isinstance(calibration_images, (str, Path)):
            calibration_images = load_calibration_images(calibration_images, count=calibration_count)
        calibration_images = [torch.from_numpy(array) for array in _iter_images(calibration_images)]
    if onnx_model is not None:
        fp32_path = Path(onnx_model)
        if not fp32_path.is_file():
            raise DataError(f"ONNX graph not found: {fp32_path}")
    else:
        fp32_path = folder / "keypoint_net.onnx"
        export_onnx(model, fp32_path)
    if name == "ort-fp32":
        path, details = fp32_path, {}
    else:
        path = folder / "keypoint_net.int8.onnx"
        quantize_int8(
            fp32_path, path, calibration_images, float_layers=float_layers, method=calibration_method
        )
        details = {"float_layers": list(float_layers), "calibration": calibration_method}
    users_graph = onnx_model is not None and path == Path(onnx_model)  # ort-fp32 on a given graph
    if not (keep_files or users_graph):
        details["onnx"] = None  # the graph was in a temporary folder, removed once the session is built
    return _ort_backend(name, path, threads, details, model.in_channels)


class BackendDetector:
    """A :class:`Backend` as an HPatches detector (:class:`kp2d.eval.hpatches.Detector`).

    Takes ``(B, H, W, 3)`` uint8 images (BGR as the evaluation reads them; the channels are passed on as
    given, like :class:`kp2d.eval.hpatches.KeyPointNetDetector`), scales them to [0, 1] and returns per
    image ``(prob (N, 3) float32 rows (x, y, score), desc (N, 256) float32)``: every cell with
    score > 0, in raster order of the cell grid.
    """

    norm = cv2.NORM_L2

    def __init__(self, backend: Backend, device: str | torch.device = "cpu") -> None:
        self.backend = backend
        self.name = backend.name
        self.device = torch.device(device)

    def __call__(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """See the class docstring."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float() / 255.0
        out = self.backend(batch)
        rows = torch.cat([out.coord, out.score], dim=1).flatten(2).transpose(1, 2).float().cpu().numpy()
        descs = out.desc.flatten(2).transpose(1, 2).float().cpu().numpy()
        keep = rows[..., 2] > 0
        return [(rows[b][keep[b]], descs[b][keep[b]]) for b in range(len(rows))]


# --------------------------------------------------------------------------------------------------
# int8 quantisation
# --------------------------------------------------------------------------------------------------


def load_calibration_images(
    folder: str | Path, count: int = 32, size: tuple[int, int] = CALIBRATION_SIZE
) -> torch.Tensor:
    """``count`` photos of ``folder`` (evenly spread over the sorted file list), RGB, resized to ``size``.

    The photos are found and read as training photos are (:func:`kp2d.data.image_folder.list_images`:
    recursive, hidden files skipped; :func:`~kp2d.imageio.read_image_rgb`).

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
        fp32_path: graph written by :func:`kp2d.export.export_onnx`.
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
