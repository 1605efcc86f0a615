"""A second network run beside a model's own, combined with it in several ways, through the HPatches protocol.

    python scripts/second_run.py --hpatches ../shared/data/adobe-panoramas --turn 45 \
        --variants first,score,share:0.25
    python scripts/second_run.py --hpatches ../shared/data/adobe-panoramas --second-scale 1.4 \
        --variants first,second-descriptors,dual:0.3

The first run is the model at its own input scale (``--scale-factor`` to change it). The second runs at
``--second-scale`` (default: the first's) on the image turned by ``--turn`` degrees (default 0), cut to its
central ``--crop`` fraction of each side first (default 1: the whole image). Every variant's keypoints and
descriptors go through the protocol of ``kp2d eval`` (same selection and metrics, one table row per folder
and variant); both runs are computed once per sequence and shared by the variants:

- ``first``: the first run alone (what ``kp2d eval`` gives);
- ``score``: both runs' keypoints pooled by score (as ``extract``'s ``extra_scales`` / ``extra_rotations``);
- ``share:F``: both pooled so that the protocol's top-k takes a fraction F from the second run (each run's
  keypoints re-scored by rank);
- ``weighted:W``: both pooled by score, the second run's scores multiplied by W (0 < W < 1) first;
- ``second-descriptors``: the first run's keypoints with the second run's descriptors sampled at them (those
  the second run sees: inside its cut image, and :data:`TURNED_MARGIN` px inside a turned one);
- ``dual:F``: each keypoint of the first run twice, with each run's descriptor, the second copies taking a
  fraction F of the top-k by rank (those the second run does not see keep one copy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from kp2d.data.hpatches import HPatchesDataset
from kp2d.errors import ConfigError, Kp2dError
from kp2d.eval.hpatches import TABLE_HEADER, Detection, check_sequence_problems, summarize, table_row
from kp2d.eval.metrics import evaluate_pair
from kp2d.eval.settings import check_eval_scale_factor, parse_shapes
from kp2d.features.dense import CELL
from kp2d.features.extraction import (
    TURNED_MARGIN,
    dense_cells,
    pad_to_multiple,
    rescale_images,
    resolve_backend,
    resolved_precision,
    rotate_images,
    to_image_pixels,
)
from kp2d.geometry import rotation_about_center, warp_points
from kp2d.io.inference import model_interpolation, model_scale_factor
from kp2d.io.weights import DEFAULT_MODEL
from kp2d.models.keypoint_net import load_keypoint_net

KINDS = ("first", "score", "share", "weighted", "second-descriptors", "dual")


def parse_variants(text: str) -> list[tuple[str, float]]:
    """``"first,share:0.25"`` → ``[("first", 0.0), ("share", 0.25)]``; ConfigError on anything else."""
    variants = []
    for item in text.split(","):
        kind, _, value = item.strip().partition(":")
        if kind not in KINDS:
            raise ConfigError(f"--variants: unknown variant '{item}' (use {', '.join(KINDS)})")
        needs_fraction = kind in ("share", "weighted", "dual")
        if needs_fraction != bool(value):
            what = f"give a fraction, e.g. {kind}:0.25" if needs_fraction else "takes no value"
            raise ConfigError(f"--variants: '{item}': {what}")
        fraction = 0.0
        if needs_fraction:
            try:
                fraction = float(value)
            except ValueError:
                fraction = -1.0
            if not 0.0 < fraction < 1.0:
                raise ConfigError(f"--variants: '{item}': the fraction must lie between 0 and 1")
        variants.append((kind, fraction))
    return variants


def rank_scores(scores: np.ndarray, slots: float) -> np.ndarray:
    """Scores replaced by ``1 - rank / slots``: the best is 1, and ``slots`` of them lie above 0."""
    ranked = np.empty(len(scores), dtype=np.float32)
    ranked[np.argsort(-scores, kind="stable")] = 1.0 - np.arange(len(scores)) / slots
    return ranked


class TwoRuns:
    """The first and second runs on a sequence's views: ``runs(images (B, H, W, 3) uint8)``."""

    def __init__(self, model, precision: str, first_scale: float, second_scale: float, turn: float,
                 crop: float, keypoints: bool, descriptors: bool) -> None:
        self.model, self.first_scale, self.second_scale = model, first_scale, second_scale
        self.turn, self.crop = turn, crop
        self.interpolation = model_interpolation(model)  # as the model's extract enlarges its input
        self.backend = resolve_backend(model, None, precision)
        self.network = None if self.backend is not None else model
        self.keypoints, self.descriptors = keypoints, descriptors

    def __call__(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per view: ``rows (N, 3)`` x, y, score and ``desc (N, 256)`` of the first run, and what the
        variants need of the second (``second_rows`` / ``second_desc``; ``second_at_first`` / ``seen``)."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        first = self._cells(batch, self.first_scale, 0.0)
        height, width = batch.shape[-2:]
        crop_h, crop_w = round(height * self.crop), round(width * self.crop)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        cut = batch[..., top:top + crop_h, left:left + crop_w].contiguous()
        found = [{"rows": rows, "desc": desc} for rows, desc in first]
        if self.keypoints:
            for item, (rows, desc) in zip(found, self._cells(cut, self.second_scale, self.turn), strict=True):
                rows[:, 0] += left
                rows[:, 1] += top
                item["second_rows"], item["second_desc"] = rows, desc
        if self.descriptors:
            offset = np.array([left, top], dtype=np.float32)
            described = self._descriptors_at(cut, [item["rows"][:, :2] - offset for item in found])
            for item, (desc, seen) in zip(found, described, strict=True):
                item["second_at_first"], item["seen"] = desc, seen
        return found

    def _cells(self, batch: torch.Tensor, scale: float, turn: float) -> list[Detection]:
        with torch.inference_mode():
            cells = dense_cells(self.network, batch, self.backend, scale, turn, self.interpolation)
        rows = torch.cat([cells.coords, cells.scores[:, None]], 1).flatten(2).transpose(1, 2).float().numpy()
        descs = cells.descriptors.flatten(2).transpose(1, 2).float().numpy()
        keep = cells.valid.flatten(1).numpy()
        return [(rows[b][keep[b]].copy(), descs[b][keep[b]]) for b in range(len(rows))]

    def _descriptors_at(
        self, batch: torch.Tensor, points: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image of ``batch``: the second run's ``(N, 256)`` descriptors at its ``points (N, 2)`` and the
        ``(N,)`` points it sees; one network run for the batch.

        Points outside the turned image get a zero map's descriptor (not finite): never seen.
        """
        height, width = batch.shape[-2:]
        counts = [len(item) for item in points]
        at_image = torch.from_numpy(np.concatenate(points)).float()
        image = batch
        if self.turn:
            image = rotate_images(batch, self.turn)
            at_image = warp_points(at_image[None], rotation_about_center(self.turn, height, width))[0]
        margin = TURNED_MARGIN if self.turn else 0.0  # a turned copy's empty corners, as extract drops them
        seen = (at_image[:, 0] >= margin) & (at_image[:, 0] <= width - 1 - margin)
        seen &= (at_image[:, 1] >= margin) & (at_image[:, 1] <= height - 1 - margin)
        resized = rescale_images(image, self.second_scale, self.interpolation)
        network_size_wh = (resized.shape[-1], resized.shape[-2])
        padded = pad_to_multiple(resized, CELL)
        # image -> network pixels: the inverse of to_image_pixels is the same map with the sizes swapped
        at_network = to_image_pixels(at_image.t()[None], (width, height), network_size_wh)[0].t().contiguous()
        batch_index = torch.repeat_interleave(torch.arange(len(points)), torch.tensor(counts))
        with torch.inference_mode():
            if self.backend is not None and self.backend.cells is not None:
                features = self.backend.cells(padded).features
                desc = self.backend.descriptors_at(features, batch_index, at_network, *padded.shape[-2:])
            else:
                features = self.model.forward_cells(padded).features
                desc = self.model.descriptors_at(features, batch_index, at_network, *padded.shape[-2:])
        desc = desc.float().numpy()
        seen = seen.numpy() & np.isfinite(desc).all(axis=1)
        splits = np.cumsum(counts)[:-1]
        return list(zip(np.split(desc, splits), np.split(seen, splits), strict=True))


def combine(found: list[dict[str, np.ndarray]], kind: str, fraction: float, top_k: int) -> list[Detection]:
    """One variant's detections of a sequence's views from both runs (see the module's docstring)."""
    detections = []
    for item in found:
        rows, desc = item["rows"], item["desc"]
        if kind == "first":
            detections.append((rows, desc))
        elif kind == "second-descriptors":
            seen = item["seen"]
            detections.append((rows[seen], item["second_at_first"][seen]))
        elif kind in ("score", "share", "weighted"):
            second = item["second_rows"]
            if kind == "share":
                rows, second = rows.copy(), second.copy()
                rows[:, 2] = rank_scores(rows[:, 2], top_k * (1 - fraction))
                second[:, 2] = rank_scores(second[:, 2], top_k * fraction)
            elif kind == "weighted":
                second = second.copy()
                second[:, 2] *= fraction
            detections.append((np.concatenate([rows, second]), np.concatenate([desc, item["second_desc"]])))
        else:  # dual
            seen = item["seen"]
            first_copy, second_copy = rows.copy(), rows[seen].copy()
            first_copy[:, 2] = rank_scores(rows[:, 2], top_k * (1 - fraction))
            second_copy[:, 2] = rank_scores(rows[seen, 2], top_k * fraction)
            detections.append((
                np.concatenate([first_copy, second_copy]),
                np.concatenate([desc, item["second_at_first"][seen]]),
            ))
    return detections


def evaluate_variants(
    runs: TwoRuns, variants: list[tuple[str, float]], root: Path, size_wh: tuple[int, int], top_k: int
) -> list[dict[str, float]]:
    """The protocol's means for each variant on the sequences under ``root``; both runs once per sequence."""
    dataset = HPatchesDataset(root, size_wh)
    per_pair: list[list[dict[str, float]]] = [[] for _ in variants]
    for index in range(len(dataset)):
        sample = dataset[index]
        check_sequence_problems(sample, False, [])
        if not sample.pair_names:
            continue
        found = runs(sample.images)
        for pairs, (kind, fraction) in zip(per_pair, variants, strict=True):
            (prob1, desc1), *others = combine(found, kind, fraction, top_k)
            for homography, (prob2, desc2) in zip(sample.homographies, others, strict=True):
                pairs.append(evaluate_pair(prob1, desc1, prob2, desc2, homography, dataset.size_wh, top_k))
    return [summarize(pairs) for pairs in per_pair]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"shipped name or checkpoint (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--hpatches", required=True, type=Path, nargs="+", metavar="DIR")
    parser.add_argument("--variants", default="first,score", help="comma-separated (default first,score)")
    parser.add_argument("--shape", default="320x240", metavar="WxH", help="default 320x240")
    parser.add_argument("--top-k", default=None, metavar="K", help="default 300 at 320x240, else 1000")
    parser.add_argument("--scale-factor", type=float, default=None, metavar="S",
                        help="the first run's input scale (default: the model's recorded one)")
    parser.add_argument("--second-scale", type=float, default=None, metavar="S",
                        help="the second run's input scale (default: the first's)")
    parser.add_argument("--turn", type=float, default=0.0, metavar="DEG", help="turn of the second run")
    parser.add_argument("--crop", type=float, default=1.0, metavar="F",
                        help="the second run sees the central F of each side (default 1)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="default: the model's recorded one")
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variants)
        if args.second_scale is not None and not args.second_scale > 0:
            raise ConfigError(f"--second-scale must be a number > 0, got {args.second_scale:g}")
        if not 0.25 <= args.crop <= 1.0:
            raise ConfigError(f"--crop must lie between 0.25 and 1, got {args.crop:g}")
        ((width, height, top_k),) = parse_shapes([args.shape], [args.top_k] if args.top_k else None)
        for root in args.hpatches:  # a missing or empty folder stops here, before the network loads
            HPatchesDataset(root, (width, height))
        model = load_keypoint_net(args.model)
        if model.in_channels != 3:
            raise ConfigError("the model must take colour images (model.use_color: true)")
        first_scale = model_scale_factor(model, args.scale_factor)
        second_scale = first_scale if args.second_scale is None else args.second_scale
        settings = [(round(width * args.crop), round(height * args.crop), top_k)]
        check_eval_scale_factor(first_scale, [(width, height, top_k)])
        check_eval_scale_factor(second_scale, settings, "--second-scale")
        precision = resolved_precision(model, args.precision)
        kinds = {kind for kind, _ in variants}
        runs = TwoRuns(model, precision, first_scale, second_scale, args.turn, args.crop,
                       keypoints=bool(kinds & {"score", "share", "weighted"}),
                       descriptors=bool(kinds & {"second-descriptors", "dual"}))
        second = f"x{second_scale:g}" + (f" turned {args.turn:g}" if args.turn else "")
        second += f", central {args.crop:g}" if args.crop < 1 else ""
        print(f"{Path(args.model).stem}: first run x{first_scale:g}, second run {second}; {precision}, "
              f"{width}x{height}, top {top_k}\n")
        print(TABLE_HEADER)
        for root in args.hpatches:
            results = evaluate_variants(runs, variants, root, (width, height), top_k)
            for (kind, fraction), result in zip(variants, results, strict=True):
                label = f"{root.name}, {kind}" + (f" {fraction:g}" if fraction else "")
                print(table_row(label, result), flush=True)
    except Kp2dError as error:
        print(f"second_run: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
