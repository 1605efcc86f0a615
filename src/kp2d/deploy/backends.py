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
ort-fp32       ONNX Runtime CPU, all graph optimisations, on the exported graph (:mod:`kp2d.deploy.onnx`)
ort-int8       ONNX Runtime, static int8 (QDQ, per-channel int8 weights, uint8 activations),
               calibrated on photos; the score and location output convolutions, the coordinates
               and the descriptor sampling stay float32
============== =========================================================================================

The ``torch-*`` backends run on the device the model was on when they were built (inputs must be there:
:func:`kp2d.extract` moves them); the ``ort-*`` backends run on the CPU and return tensors on the
input's device.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kp2d.deploy.int8 import DEFAULT_FLOAT_LAYERS, _iter_images, load_calibration_images, quantize_int8
from kp2d.deploy.onnx import export_onnx
from kp2d.errors import ConfigError, DataError
from kp2d.features.dense import KeyPointNetOutput
from kp2d.models import KeyPointNet
from kp2d.models.fast import TORCH_BACKENDS, Backend, build_torch_backend

__all__ = ["BACKENDS", "Backend", "load_backend"]

log = logging.getLogger(__name__)

BACKENDS = (*TORCH_BACKENDS, "ort-fp32", "ort-int8")


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
        onnx_model: ``ort-*``: a graph already written by :func:`kp2d.deploy.onnx.export_onnx` for ``model``
            (fp32) to use instead of exporting again.

    Returns:
        A :class:`Backend`.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    if name == "ort-int8" and calibration_images is None:
        raise ConfigError("backend ort-int8 needs calibration images (a folder of training photos)")
    if name == "torch-bf16":
        from kp2d.runtime import cpu_has_fast_bf16

        if next(model.parameters()).device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): torch-bf16 is emulated here and "
                        "slower than torch-fused")
    if name in TORCH_BACKENDS:
        return build_torch_backend(name, model)

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
