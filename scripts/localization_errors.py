"""How precise are the keypoints? The distribution of the per-keypoint localization error on HPatches.

    python scripts/localization_errors.py --model v4 --hpatches ../shared/data/hpatches-synth --baselines sift

``kp2d eval``'s localization error is a mean per pair; this pools the keypoints instead. For every pair and
every keypoint both images see (the protocol's selection: inside the other view, top ``--top-k`` of each),
the distance to the nearest keypoint of the other image (in image-2 pixels) counts when it is within the
protocol's 3 px. Prints one Markdown table per method: count, mean, median, 90th percentile, and the shares
under 0.5 px and 1 px, for the illumination (``i``) and viewpoint (``v``) pairs and each view of each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kp2d.data.hpatches import HPatchesDataset
from kp2d.errors import ConfigError, Kp2dError
from kp2d.eval.hpatches import KeyPointNetDetector, check_sequence_problems, pair_groups
from kp2d.eval.metrics import DISTANCE_THRESHOLD, nearest_distances
from kp2d.eval.settings import (
    OPENCV_METHODS,
    check_eval_scale_factor,
    opencv_detector,
    parse_baselines,
    parse_shapes,
)
from kp2d.models.keypoint_net import load_keypoint_net


def repeated_distances(detector, dataset: HPatchesDataset, top_k: int) -> tuple[list[str], list[np.ndarray]]:
    """Pair names and, per pair, the nearest distances (both directions) of the repeated keypoints.

    Raises:
        DataError: a missing or unreadable image or homography (as ``kp2d eval`` without ``--skip-bad``).
    """
    names, distances = [], []
    for sample in dataset:
        check_sequence_problems(sample, skip_bad=False, skipped=[])
        if not sample.pair_names:
            continue
        detections = detector(sample.images)
        prob1 = detections[0][0]
        pairs = zip(sample.homographies, sample.pair_names, strict=True)
        for (prob2, _), (homography, name) in zip(detections[1:], pairs, strict=True):
            nearest1, nearest2 = nearest_distances(prob1, prob2, homography, dataset.size_wh, top_k)
            nearest = np.concatenate([nearest1, nearest2])
            names.append(name)
            distances.append(nearest[nearest <= DISTANCE_THRESHOLD])
    return names, distances


def distribution_table(label: str, names: list[str], distances: list[np.ndarray]) -> str:
    """Markdown table of the pooled distances, per group of pairs (see :func:`pair_groups`)."""
    lines = [
        label,
        "",
        "| pairs | keypoints | mean | median | p90 | < 0.5 px | < 1 px |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, indices in pair_groups(names).items():
        pooled = np.concatenate([distances[i] for i in indices])
        if not len(pooled):
            lines.append(f"| {group} | 0 | | | | | |")
            continue
        median, p90 = np.percentile(pooled, [50, 90])
        lines.append(
            f"| {group} | {len(pooled)} | {pooled.mean():.3f} | {median:.3f} | {p90:.3f} | "
            f"{np.mean(pooled < 0.5):.2f} | {np.mean(pooled < 1):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="NAME", help="shipped pretrained name or checkpoint path")
    source.add_argument("--method", choices=OPENCV_METHODS, help="classical OpenCV method alone")
    parser.add_argument("--hpatches", required=True, type=Path, metavar="DIR")
    parser.add_argument("--shape", default="320x240", metavar="WxH", help="default 320x240")
    parser.add_argument("--top-k", default=None, metavar="K", help="default 300 at 320x240, else 1000")
    parser.add_argument("--baselines", default="", metavar="M", help="also these OpenCV methods: sift,orb")
    parser.add_argument(
        "--scale-factor", type=float, default=1.0, metavar="S", help="network input scale (kp2d eval's)"
    )
    args = parser.parse_args(argv)
    try:
        ((width, height, top_k),) = parse_shapes([args.shape], [args.top_k] if args.top_k else None)
        if args.scale_factor != 1:  # as kp2d eval checks it
            if not args.model:
                raise ConfigError("--scale-factor applies to KeyPointNet, not to --method")
            check_eval_scale_factor(args.scale_factor, [(width, height, top_k)])
        dataset = HPatchesDataset(args.hpatches, (width, height))
        methods = ([args.method] if args.method else []) + parse_baselines(args.baselines, args.method)
        detectors = []
        if args.model:
            network = load_keypoint_net(args.model)
            label = Path(args.model).stem
            if args.scale_factor != 1:
                label += f" (input x{args.scale_factor:g})"
            detectors.append((label, KeyPointNetDetector(network, scale_factor=args.scale_factor)))
        detectors += [(m.upper(), opencv_detector(m, top_k)) for m in methods]  # as kp2d eval runs them
        for label, detector in detectors:
            names, distances = repeated_distances(detector, dataset, top_k)
            print(distribution_table(f"{label}, {width}x{height}, top {top_k}", names, distances) + "\n")
    except Kp2dError as error:
        print(f"localization_errors: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
