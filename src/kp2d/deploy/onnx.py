"""ONNX export of :meth:`KeyPointNet.describe` (score, keypoints and sampled descriptors in one graph).

The graph has one input and three outputs, all float32:

============  =====================  ==========================================================
name          shape                  meaning
============  =====================  ==========================================================
``image``     ``(B, C, H, W)``       C = 3: RGB (the training order), 1 for a grayscale network; [0, 1]
``score``     ``(B, 1, H/8, W/8)``   keypoint score, 0 on the border cells
``coord``     ``(B, 2, H/8, W/8)``   keypoint ``(x, y)`` in input pixels
``desc``      ``(B, 256, H/8, W/8)`` descriptors sampled at ``coord``, L2-normalised
============  =====================  ==========================================================

``B``, ``H`` and ``W`` are dynamic (``H``, ``W`` multiples of 8). BatchNorm is folded into the
convolutions before export (identical in eval mode). ``grid_sample`` with ``align_corners=True`` needs
opset 16 or later.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from kp2d.deploy.fold import fold_batchnorm
from kp2d.errors import ConfigError, Kp2dError, make_folder
from kp2d.features.dense import descriptor_grid, read_map
from kp2d.io.files import atomic_path
from kp2d.models import KeyPointNet

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "DescribeGraph", "export_onnx", "onnx_output_names"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 16  # GridSample (align_corners) enters the standard domain at opset 16
INPUT_NAME = "image"
OUTPUT_NAMES = ("score", "coord", "desc")
_EXAMPLE_SHAPE_HW = (64, 96)  # (H, W) of the tracing example; any multiple of 8 works
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export")


def onnx_output_names() -> tuple[str, ...]:
    """Names of the graph outputs, in order: ``("score", "coord", "desc")``."""
    return OUTPUT_NAMES


class DescribeGraph(nn.Module):
    """:meth:`KeyPointNet.describe` as a traceable module returning ``(score, coord, desc)``.

    The descriptor sampling is :func:`kp2d.features.dense.sample_descriptors`' arithmetic, read the way the
    network's ``inference_settings.descriptor_sampling`` says: the grid from
    :func:`kp2d.features.dense.descriptor_grid` (sizes stay symbolic in the graph), bilinear ``grid_sample``,
    then L2 normalisation over channels written as a sum (any opset).
    """

    def __init__(self, net: KeyPointNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image ``(B, C, H, W)`` → ``(score, coord, desc)`` as in :class:`~kp2d.models.KeyPointNetOutput`."""
        score, coord, dense = self.net(image)
        height, width = image.shape[-2:]
        sampling = self.net.inference_settings.descriptor_sampling
        grid = descriptor_grid(coord.permute(0, 2, 3, 1), height, width, sampling)
        sampled = read_map(dense, grid.to(dense.dtype), sampling)
        desc = sampled / (sampled * sampled).sum(dim=1, keepdim=True).sqrt()  # ReduceSum: any opset ≥ 13
        return score, coord, desc


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ConfigError(
            f"opset {opset} is too old: grid_sample with align_corners needs opset >= {MIN_OPSET}"
        )


def export_onnx(
    model: KeyPointNet,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    example_shape_hw: tuple[int, int] = _EXAMPLE_SHAPE_HW,
    fold_bn: bool = True,
    check: bool = True,
) -> Path:
    """Write ``model.describe`` as an ONNX graph (see the module docstring for inputs and outputs).

    Args:
        model: the network; exported in eval mode (a copy: ``model`` itself is left unchanged).
        path: the ``.onnx`` file to write (folders are created).
        opset: ONNX opset, at least 16.
        dynamic: batch, height and width dynamic; else fixed to ``(1, C, *example_shape_hw)``.
        example_shape_hw: ``(H, W)`` of the example used for tracing (the fixed size when not dynamic).
        fold_bn: fold BatchNorm into the convolutions first (see :func:`kp2d.deploy.fold.fold_batchnorm`).
        check: run ``onnx.checker`` (full check, with shape inference) on the written file.

    Returns:
        The path written.
    """
    _check_opset(opset)
    height, width = example_shape_hw
    if height % 8 or width % 8 or height < 16 or width < 16:
        raise ValueError(f"example_shape_hw must be multiples of 8 and at least 16, got {example_shape_hw}")
    path = Path(path)
    make_folder(path.parent)

    net = (fold_batchnorm(model) if fold_bn else _eval_copy(model)).float()  # a .half() model too
    # the graph has no memory layout, and torch.export guards a channels-last strided conv to small batches
    net = net.to(memory_format=torch.contiguous_format)
    graph = DescribeGraph(net).eval()
    device = next(net.parameters()).device
    example = torch.rand(1, net.in_channels, height, width, device=device)
    dynamic_shapes = None
    if dynamic:
        cells_h = torch.export.Dim("cells_h", min=2, max=1024)
        cells_w = torch.export.Dim("cells_w", min=2, max=1024)
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = {"image": {0: batch, 2: 8 * cells_h, 3: 8 * cells_w}}

    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, draft-export notes)
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            verbose=False,
        )
    # renamed over ``path`` once finished and checked: a failure (e.g. an opset the converter cannot
    # reach) leaves no file, and an existing file at ``path`` as it was
    with atomic_path(path) as partial:
        program.save(str(partial))
        _finalize(partial, opset)
        if check:
            check_onnx(partial)
    log.info("exported %s (opset %d, %s shapes)", path, opset, "dynamic" if dynamic else "fixed")
    return path


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The exporter and the ONNX optimiser log every rewrite at INFO; keep only their errors."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _eval_copy(model: KeyPointNet) -> KeyPointNet:
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def _finalize(path: Path, opset: int) -> None:
    """Set the requested opset and readable symbolic dims (``batch``, ``height``, ``width``, ...).

    The exporter writes opset 18 or later; older opsets go through the ONNX version converter.
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    if _default_opset(model) != opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as err:  # noqa: BLE001 - the converter raises assorted errors
            raise ConfigError(f"cannot write opset {opset}: {err}".splitlines()[0]) from None
    graph = model.graph
    renames: dict[str, str] = {}
    for values, names in ((graph.input, ("batch", None, "height", "width")),
                          (graph.output, ("batch", None, "height/8", "width/8"))):
        for value in values:
            for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
                if name is not None and dim.HasField("dim_param"):
                    renames.setdefault(dim.dim_param, name)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    onnx.save(model, str(path))


def _default_opset(model) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def check_onnx(path: str | Path) -> None:
    """``onnx.checker`` with full shape inference; raises :class:`Kp2dError` naming the file on failure."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise Kp2dError(f"{path}: exported ONNX graph fails onnx.checker: {err}") from None
