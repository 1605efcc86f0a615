"""KeyPointNet's keypoints from several input scales pooled into one set, through the HPatches protocol.

    python scripts/multiscale_eval.py ../shared/data/hpatches-synth --scales 2,1 --json synth_2_1.json

An experiment, not a feature of the package: each image goes through the network once per scale (as
``kp2d eval --scale-factor S``), the keypoints of all scales (in the evaluation image's pixels) and their
descriptors are pooled, and the protocol keeps the ``--top-k`` best scores of the pool. Prints the six
metrics; ``--json`` writes what ``kp2d eval --json`` writes, so ``scripts/hpatches_breakdown.py`` reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kp2d.checks import check_output_path
from kp2d.errors import ConfigError, Kp2dError, user_message
from kp2d.eval.hpatches import METRIC_NAMES, KeyPointNetDetector, evaluate_hpatches
from kp2d.eval.settings import parse_shapes
from kp2d.io.files import write_json
from kp2d.io.weights import DEFAULT_MODEL
from kp2d.models.keypoint_net import load_keypoint_net


class PooledScales:
    """A :class:`~kp2d.eval.hpatches.Detector`: the union of one :class:`KeyPointNetDetector` per scale."""

    def __init__(self, model, scales: list[float], score_weights: list[float] | None = None) -> None:
        self.detectors = [KeyPointNetDetector(model, scale_factor=scale) for scale in scales]
        self.norm = self.detectors[0].norm
        self.score_weights = score_weights or [1.0] * len(scales)
        self.name = "KeyPointNet x" + "+".join(f"{scale:g}" for scale in scales)
        if score_weights:
            self.name += " (scores x" + ",".join(f"{w:g}" for w in score_weights) + ")"

    def __call__(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: ``prob (N1 + N2 + ..., 3)`` and ``desc (N1 + N2 + ..., 256)``, scale by scale."""
        per_scale = [
            [(prob * np.array([1.0, 1.0, weight], dtype=prob.dtype), desc) for prob, desc in detector(images)]
            for detector, weight in zip(self.detectors, self.score_weights, strict=True)
        ]  # a scale's scores times its weight: the top-k prefers the scales with larger weights
        return [
            tuple(np.concatenate([detections[index][part] for detections in per_scale]) for part in (0, 1))
            for index in range(len(images))
        ]


def parse_scales(text: str) -> list[float]:
    """``"2,1"`` → ``[2.0, 1.0]``; ConfigError unless every scale is a number > 0."""
    try:
        scales = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--scales takes numbers separated by commas, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales takes numbers > 0, got {text!r}")
    return scales


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hpatches", type=Path, help="folder of HPatches-format sequences")
    parser.add_argument("--scales", default="2,1", help="input scales, comma-separated (default: 2,1)")
    parser.add_argument(
        "--score-weights", help="a factor per scale on its scores before the top-k (default: all 1)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"shipped name or checkpoint (default: the shipped default model, now {DEFAULT_MODEL})",
    )
    parser.add_argument("--shape", default="320x240", help="evaluation size WxH (default: 320x240)")
    parser.add_argument("--top-k", default="300", help="keypoints per image (default: 300)")
    parser.add_argument("--json", type=Path, help="write the results here (its folder is created)")
    args = parser.parse_args(argv)
    try:
        scales = parse_scales(args.scales)
        weights = parse_scales(args.score_weights) if args.score_weights else None
        if weights and len(weights) != len(scales):
            raise ConfigError(
                f"--score-weights needs one number per scale ({len(scales)}), got {args.score_weights!r}"
            )
        ((width, height, top_k),) = parse_shapes([args.shape], [str(args.top_k)])
        if args.json:
            check_output_path(args.json, "--json")  # before the evaluation, so that its results are not lost
        detector = PooledScales(load_keypoint_net(args.model), scales, weights)
        result = evaluate_hpatches(detector, args.hpatches, (width, height), top_k, progress=False)
        print(f"| {detector.name} | " + " | ".join(f"{result[name]:.3f}" for name in METRIC_NAMES) + " |")
        if args.json:
            write_json(args.json, {f"{width}x{height}": {**result, "model": detector.name}})
    except (Kp2dError, OSError) as error:
        print(f"multiscale_eval: error: {user_message(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
