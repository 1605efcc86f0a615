"""HPatches evaluation: run a detector over every sequence and average the per-pair metrics.

A *detector* is any callable ``detector(images) -> list[(prob, desc)]``:

- ``images``: ``(B, H, W, 3)`` uint8 numpy, BGR (as read by OpenCV), all views of one sequence resized
  to the evaluation shape; ``images[0]`` is view 1.
- returns, per image, ``prob`` ``(N, 3)`` float32 rows ``(x, y, score)`` in pixels of the resized image
  (higher score = better) and ``desc`` ``(N, D)`` descriptors (float32, or uint8 for binary ones).
- optional attributes: ``norm`` (``cv2.NORM_L2`` by default, ``cv2.NORM_HAMMING`` for binary
  descriptors) and ``name``.

:class:`KeyPointNetDetector` and :class:`OpenCVDetector` (SIFT, ORB) implement it; other backends (ONNX,
int8, ...) only need the same call. Per-pair numbers are those of the original protocol
(:mod:`kp2d.eval.metrics`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from tqdm import tqdm

from kp2d.data.hpatches import HPatchesDataset, SequenceSample
from kp2d.errors import DataError
from kp2d.eval.metrics import evaluate_pair
from kp2d.features.extraction import (
    DenseCells,
    backend_precision,
    check_scale_factor,
    dense_cells,
    resolve_backend,
)
from kp2d.features.scale_suppression import cell_pitch_xy, suppressed_across_scales
from kp2d.io.inference import (
    model_extra_rotations,
    model_extra_scales,
    model_extra_suppression,
    model_extra_weight,
    model_interpolation,
    model_scale_factor,
    run_score_weight,
)

__all__ = [
    "METRIC_NAMES",
    "parse_metric_names",
    "result_entries",
    "TABLE_HEADER",
    "Detector",
    "KeyPointNetDetector",
    "check_sequence_problems",
    "OpenCVDetector",
    "evaluate_hpatches",
    "pair_groups",
    "summarize",
    "table_row",
]

log = logging.getLogger(__name__)

METRIC_NAMES = ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")
Detection = tuple[np.ndarray, np.ndarray]


class Detector(Protocol):
    """``(B, H, W, 3)`` uint8 BGR images → per image ``(prob (N, 3) float32 (x, y, score), desc (N, D))``."""

    def __call__(self, images: np.ndarray) -> list[Detection]:
        """Detect and describe each image of the batch."""
        ...


class KeyPointNetDetector:
    """KeyPointNet as an HPatches detector: every cell with score > 0, in raster order of the cell grid.

    The batch is scaled to [0, 1] (``/ 255``, float32, BGR channel order as the original evaluation) and
    run through :meth:`~kp2d.models.KeyPointNet.describe` (or a fast backend) under
    ``torch.inference_mode()``; border cells (score 0) drop out. A 1-channel model gets the grayscale
    image; a backend gets the channels as given and converts them itself.

    Args:
        model: a :class:`~kp2d.models.KeyPointNet`, put in eval mode; or a
            :class:`~kp2d.deploy.backends.Backend` built from one (run as it is).
        device: where to run; default: where the model's parameters are (the model is moved there), the
            CPU for a backend.
        name: label for tables (default: ``"KeyPointNet"``, or the backend's name).
        channels_last: convert the model to channels-last memory layout (default: on CPU, where
            oneDNN convolutions are faster in that layout; outputs differ by float rounding only).
        scale_factor: run the network on the images resized by this factor (bilinear,
            see :func:`~kp2d.features.extraction.rescale_images`) and map the keypoints back to the evaluation
            shape; 1 is the original protocol. A resized size off the 8-px grid is padded bottom and right
            (as :func:`kp2d.extract` pads), keypoints in the padding left out. ``None`` (default): the
            model's ``inference_settings`` (1 unless its weights file records one).
        extra_scales: more factors to run the network at; every scale's cells are pooled (the protocol's
            top-k then picks the best scores among them). ``None`` (default): the model's
            ``inference_settings`` (none unless its weights file records some).
        extra_rotations: angles in degrees of turned copies of the images the network also runs on at
            ``scale_factor``, their cells mapped back and pooled likewise (see :func:`kp2d.extract`).
            ``None`` (default): the model's ``inference_settings``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` for a network (see :func:`kp2d.extract`); ``None``
            (default): the model's ``inference_settings``. :attr:`precision` holds what it resolved to.
        extra_weight: the extra scales' cell scores are multiplied by this before the pooling, the
            turned copies' are not (see :func:`kp2d.extract`). ``None`` (default): the model's
            ``inference_settings``.
        extra_suppression: the extra scales' cells with a main-run keypoint within this many pixels that
            scores at least as much are left out (see :func:`kp2d.extract`). ``None`` (default): the
            model's ``inference_settings``.
        interpolation: how the images are enlarged to the network's input, ``"bilinear"`` or
            ``"bicubic"`` (see :func:`kp2d.extract`). ``None`` (default): the model's
            ``inference_settings``.
    """

    norm = cv2.NORM_L2

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device | None = None,
        name: str | None = None,
        channels_last: bool | None = None,
        scale_factor: float | None = None,
        extra_scales: tuple[float, ...] | list[float] | None = None,
        extra_rotations: tuple[float, ...] | list[float] | None = None,
        precision: str | None = None,
        extra_weight: float | None = None,
        extra_suppression: float | None = None,
        interpolation: str | None = None,
    ) -> None:
        self.scale_factor = check_scale_factor(model_scale_factor(model, scale_factor))
        self.interpolation = model_interpolation(model, interpolation)
        self.extra_weight = model_extra_weight(model, extra_weight)
        self.extra_suppression = model_extra_suppression(model, extra_suppression)
        self.extra_scales = model_extra_scales(model, extra_scales, self.scale_factor)
        self.extra_rotations = model_extra_rotations(model, extra_rotations)
        self.is_backend = not isinstance(model, torch.nn.Module)
        if self.is_backend:
            self.device = torch.device(device if device is not None else "cpu")
            self.model, self._backend = model, model
        else:
            self.device = torch.device(device) if device is not None else next(model.parameters()).device
            self.model = model.to(self.device).eval()
            if channels_last if channels_last is not None else self.device.type == "cpu":
                self.model = self.model.to(memory_format=torch.channels_last)
            self._backend = resolve_backend(self.model, None, precision)
        self.precision = backend_precision(self._backend)
        self.name = name if name is not None else getattr(model, "name", "KeyPointNet")

    def __call__(self, images: np.ndarray) -> list[Detection]:
        """See :class:`Detector`; ``desc`` is ``(N, 256)`` float32, unit norm."""
        if not self.is_backend and getattr(self.model, "in_channels", 3) == 1:
            images = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) for image in images])[..., None]
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float() / 255.0  # (B, C, H, W) view of NHWC data: channels-last
        runs = [(scale, 0.0) for scale in (self.scale_factor, *self.extra_scales)]
        runs += [(self.scale_factor, angle) for angle in self.extra_rotations]
        main = self._cells(batch, self.scale_factor)
        per_run = [_detections(main)]
        main = main._replace(descriptors=torch.empty(0))  # the suppression needs the rest only: free them
        for scale, angle in runs[1:]:
            cells = self._cells(batch, scale, angle)
            if not angle and self.extra_suppression:
                cells = _unsuppressed_cells(cells, main, batch.shape[-2:], self.extra_suppression)
            found = _detections(cells)
            weight = run_score_weight(self.extra_weight, angle)
            if weight != 1:
                for rows, _ in found:
                    rows[:, 2] *= weight
            per_run.append(found)
        if len(per_run) == 1:
            return per_run[0]
        return [
            (np.concatenate([rows for rows, _ in found]), np.concatenate([descs for _, descs in found]))
            for found in zip(*per_run, strict=True)
        ]

    def _cells(self, batch: torch.Tensor, scale_factor: float, rotation_deg: float = 0.0) -> DenseCells:
        """Every cell of ``(B, C, H, W)`` images in [0, 1] at one scale, turned by ``rotation_deg``."""
        with torch.inference_mode():
            network = None if self.is_backend else self.model  # a backend, when there is one, runs instead
            return dense_cells(
                network, batch, self._backend, scale_factor, rotation_deg, self.interpolation
            )


def _detections(cells: DenseCells) -> list[Detection]:
    """Per image, ``(N, 3)`` rows ``(x, y, score)`` and ``(N, 256)`` descriptors of the valid cells."""
    scores = cells.scores[:, None]
    rows = torch.cat([cells.coords, scores], dim=1).flatten(2).transpose(1, 2).float().cpu().numpy()
    descs = cells.descriptors.flatten(2).transpose(1, 2).float().cpu().numpy()  # (B, Hc*Wc, 256)
    keep = cells.valid.flatten(1).cpu().numpy()
    return [(rows[b][keep[b]], descs[b][keep[b]]) for b in range(len(rows))]


def _unsuppressed_cells(
    cells: DenseCells, main: DenseCells, image_hw: tuple[int, int], radius: float
) -> DenseCells:
    """An extra scale's cells, those that the main run's cells suppress made invalid."""
    height, width = image_hw
    batch, _, rows, cols = cells.coords.shape
    image_index = torch.arange(batch, device=cells.coords.device).repeat_interleave(rows * cols)
    drop = suppressed_across_scales(
        cells.coords.permute(0, 2, 3, 1).reshape(-1, 2), cells.scores.flatten(), image_index, main.scores,
        main.coords, main.valid, cell_pitch_xy((width, height), main.network_size_wh), radius,
    )
    return cells._replace(valid=cells.valid & ~drop.view_as(cells.valid))


class OpenCVDetector:
    """A classical detector/descriptor from OpenCV on the grayscale image; score = keypoint response.

    Args:
        method: ``"sift"`` (``cv2.SIFT_create``, 128-d float descriptors, L2) or ``"orb"``
            (``cv2.ORB_create``, 32-byte binary descriptors, Hamming).
        nfeatures: keypoints the detector keeps; default all for SIFT, 2000 for ORB. Choose at least
            twice the evaluation ``top_k`` for ORB.
    """

    _DESCRIPTOR = {"sift": (128, np.float32, cv2.NORM_L2), "orb": (32, np.uint8, cv2.NORM_HAMMING)}

    def __init__(self, method: str = "sift", nfeatures: int | None = None) -> None:
        method = method.lower()
        if method not in self._DESCRIPTOR:
            raise ValueError(f"unknown OpenCV method '{method}' (use sift or orb)")
        self.method = method
        self.name = method.upper()
        self.dim, self.dtype, self.norm = self._DESCRIPTOR[method]
        if method == "sift":
            self.extractor = cv2.SIFT_create(nfeatures=nfeatures or 0)
        else:
            self.extractor = cv2.ORB_create(nfeatures=nfeatures or 2000)

    def _detect(self, image: np.ndarray) -> Detection:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        keypoints, desc = self.extractor.detectAndCompute(gray, None)
        if desc is None or not keypoints:
            return np.zeros((0, 3), np.float32), np.zeros((0, self.dim), self.dtype)
        prob = np.array([(k.pt[0], k.pt[1], k.response) for k in keypoints], dtype=np.float32)
        return prob, desc

    def __call__(self, images: np.ndarray) -> list[Detection]:
        """See :class:`Detector`."""
        return [self._detect(image) for image in images]


def _read_samples(dataset: HPatchesDataset, workers: int) -> Iterator[SequenceSample]:
    """The dataset's samples in order, read ahead by ``workers`` threads (0: read in this thread).

    Threads, not processes: OpenCV releases the GIL while decoding and resizing, and a forked DataLoader
    worker can deadlock inside OpenCV once the parent has used OpenCV's thread pool (seen here:
    ``cv2.setNumThreads`` in a forked worker hangs in ``pthread_cond_destroy``), while spawned workers
    cost seconds to start and need a ``__main__`` guard in user scripts.
    """
    if workers <= 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hpatches-reader") as pool:
        pending: deque[Future[SequenceSample]] = deque()
        next_index = 0
        while next_index < len(dataset) or pending:
            while next_index < len(dataset) and len(pending) < 2 * workers:
                pending.append(pool.submit(dataset.__getitem__, next_index))
                next_index += 1
            try:
                yield pending.popleft().result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def _default_workers() -> int:
    return min(4, max(1, (os.cpu_count() or 1) // 2))


#: The original README's table head (markdown, two lines); :func:`table_row` gives its rows.
TABLE_HEADER = (
    "| Model | Repeatability | Localization | C1 | C3 | C5 | MScore |\n|---|---|---|---|---|---|---|"
)


def table_row(label: str, result: dict[str, Any]) -> str:
    """One markdown row of :data:`TABLE_HEADER`: ``label`` and the metrics of ``result`` to 3 decimals."""
    values = (result[name] for name in METRIC_NAMES)
    return f"| {label} | " + " | ".join(
        "nan" if value is None or math.isnan(value) else f"{value:.3f}" for value in values
    ) + " |"


def summarize(per_pair: list[dict[str, Any]]) -> dict[str, float]:
    """Means of the metrics over pairs; the localization error over pairs that have one (not NaN)."""
    means: dict[str, float] = {}
    for name in METRIC_NAMES:
        values = np.array([pair[name] for pair in per_pair], dtype=np.float64)
        if name == "localization_error":
            values = values[np.isfinite(values)]
        means[name] = float(values.mean()) if len(values) else math.nan
    return means


def parse_metric_names(text: str) -> tuple[str, ...]:
    """``"c3,mscore"`` → ``("c3", "mscore")``; ValueError unless they are known metrics, at least one."""
    metrics = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    if not metrics:
        raise ValueError(f"--metrics: give at least one of {', '.join(METRIC_NAMES)}")
    return metrics


def _check_result_entry(size: str, entry: Any) -> None:
    """ValueError unless ``entry`` is one method's result at one size, with every pair's metrics."""
    if not isinstance(entry, dict):
        raise ValueError(f"{size}: not a kp2d eval result (an object with 'per_pair' expected)")
    if "per_pair" not in entry:
        raise ValueError(f"{size}: no per-pair metrics (a JSON written before kp2d eval kept them)")
    per_pair = entry["per_pair"]
    if not isinstance(per_pair, list):
        raise ValueError(f"{size}: 'per_pair' is not a list of pairs")
    if not per_pair:
        raise ValueError(f"{size}: no pair in 'per_pair'")
    for index, pair in enumerate(per_pair):
        if not isinstance(pair, dict) or not isinstance(pair.get("pair"), str):
            raise ValueError(f"{size}: per_pair[{index}] is not a pair's metrics with its name ('pair')")
        bad = [m for m in METRIC_NAMES if not (pair.get(m) is None or isinstance(pair.get(m), (int, float)))]
        missing = [m for m in METRIC_NAMES if m not in pair]
        if missing or bad:
            raise ValueError(f"{size}: pair {pair['pair']}: no number for {', '.join(missing or bad)}")


def result_entries(results: Any) -> list[tuple[str | None, str, dict[str, Any]]]:
    """``(method, size, entry)`` of each result in a ``kp2d eval --json`` file's content.

    The model's come first (method ``None``), then each ``--baselines`` method's; every entry has every
    pair's metrics.

    Raises:
        ValueError: ``results`` is not such a result (not an object of sizes, a pair without its metrics,
            no result at all).
    """
    if not isinstance(results, dict):
        raise ValueError("not a kp2d eval --json result (a JSON object of sizes expected)")
    baselines = results.get("baselines", {})
    if not isinstance(baselines, dict) or not all(isinstance(sizes, dict) for sizes in baselines.values()):
        raise ValueError("'baselines' is not an object of methods, each an object of sizes")
    entries: list[tuple[str | None, str, Any]] = [
        (None, size, entry) for size, entry in results.items() if size != "baselines"
    ]
    for method, sizes in baselines.items():
        entries += [(method, size, entry) for size, entry in sizes.items()]
    if not entries:
        raise ValueError("no results in it (not a kp2d eval --json result?)")
    for _, size, entry in entries:
        _check_result_entry(size, entry)
    return entries


def pair_groups(pair_names: list[str]) -> dict[str, list[int]]:
    """Indices of the pairs in each group: by kind, then by kind and view.

    Kinds: ``"i"`` and ``"v"`` (sequences ``i_*``, ``v_*``), else ``"other"``; views ``"i 1-2"`` … from the
    names ``<sequence>:1-<k>`` (in HPatches the view change grows with ``k``). Groups come sorted: kind,
    then the kind's own group before its views.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(pair_names):
        sequence, _, view = name.partition(":")
        kind = sequence[:1] if sequence[:2] in ("i_", "v_") else "other"
        groups[kind].append(index)
        groups[f"{kind} {view}"].append(index)
    return dict(sorted(groups.items(), key=lambda item: (item[0].split()[0], len(item[0]), item[0])))


def check_sequence_problems(sample: SequenceSample, skip_bad: bool, skipped: list[str]) -> None:
    """Raise :class:`DataError` for the sequence's first unreadable file (``sample.problems``).

    With ``skip_bad``, log each such pair instead and add ``"<pair>: <reason>"`` to ``skipped``.
    """
    for pair_name, message in sample.problems:
        if not skip_bad:
            raise DataError(message)
        log.warning("skipping %s: %s", pair_name, message)
        skipped.append(f"{pair_name}: {message}")


def evaluate_hpatches(
    detector: Detector,
    root: str | Path,
    size_wh: tuple[int, int] = (320, 240),
    top_k: int = 300,
    subset: str = "all",
    skip_bad: bool = False,
    progress: bool = True,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``detector`` on the HPatches-format sequences under ``root``.

    Each sequence is read (ahead, in reader threads), all its views go through ``detector`` as one batch,
    and every pair ``(1, k)`` is scored with :func:`kp2d.eval.metrics.evaluate_pair`.

    Args:
        detector: see :class:`Detector`.
        root: folder of sequences.
        size_wh: evaluation size ``(W, H)``.
        top_k: keypoints kept per image.
        subset: ``"all"``, ``"i"`` or ``"v"``.
        skip_bad: leave out pairs whose files are missing or corrupt (listed in ``skipped``) instead of
            raising :class:`~kp2d.errors.DataError`.
        progress: tqdm bar over sequences (stderr).
        num_workers: reader threads (0 = read in the calling thread); default half the cores, 1 to 4.

    Returns:
        ``{"repeatability", "localization_error", "c1", "c3", "c5", "mscore"}`` (means over pairs; the
        localization error over pairs with at least one repeated keypoint), ``"pairs"`` (evaluated),
        ``"skipped"`` (``"<pair>: <reason>"``), ``"seconds"``, ``"pairs_per_second"``, ``"shape"``,
        ``"top_k"``, ``"subset"`` and ``"per_pair"`` (a list, one dict of metrics per pair with its
        ``"pair"`` name).

    Raises:
        DataError: missing folder, no sequences, a bad file (without ``skip_bad``), or no pair left.
    """
    start = time.perf_counter()
    dataset = HPatchesDataset(root, size_wh, subset)
    workers = _default_workers() if num_workers is None else num_workers
    norm = getattr(detector, "norm", cv2.NORM_L2)
    per_pair: list[dict[str, Any]] = []
    skipped: list[str] = []
    samples = _read_samples(dataset, workers)
    bar = tqdm(
        samples, total=len(dataset), desc=f"HPatches {size_wh[0]}x{size_wh[1]}", unit="seq",
        disable=not progress,
    )
    try:
        for sample in bar:
            check_sequence_problems(sample, skip_bad, skipped)
            if not sample.pair_names:
                continue
            detections = detector(sample.images)
            if len(detections) != len(sample.images):
                raise ValueError(
                    f"detector returned {len(detections)} results for {len(sample.images)} images"
                )
            prob1, desc1 = detections[0]
            for name, homography, (prob2, desc2) in zip(
                sample.pair_names, sample.homographies, detections[1:], strict=True
            ):
                metrics = evaluate_pair(
                    prob1, desc1, prob2, desc2, homography, dataset.size_wh, top_k, norm=norm
                )
                per_pair.append({"pair": name, **metrics})
            bar.set_postfix(pairs=len(per_pair), refresh=False)
    finally:
        bar.close()
        samples.close()  # stop the reader threads now, also when a bad file or Ctrl-C ends the loop
    if not per_pair:
        raise DataError(f"no pair of {root} could be evaluated ({len(skipped)} skipped)")
    seconds = time.perf_counter() - start
    if skipped:
        log.warning("%d pair(s) skipped: %s", len(skipped), "; ".join(skipped))
    return {
        **summarize(per_pair),
        "pairs": len(per_pair),
        "skipped": skipped,
        "seconds": seconds,
        "pairs_per_second": len(per_pair) / seconds,
        "shape": list(dataset.size_wh),
        "top_k": top_k,
        "subset": subset,
        "per_pair": per_pair,
    }
