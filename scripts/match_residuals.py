"""How precise are the matches the protocol fits its homography to? Residuals under the true homography.

    python scripts/match_residuals.py --hpatches probe/zoom --views 3 --runs 2.8/1.12 2.8+1.25 \
        --baselines sift

For each pair the keypoints and cross-checked matches are those of ``kp2d eval``'s homography step (the
``top_k`` keypoints of each image that the other one sees). Each match's residual is ``H p1 - p2`` in pixels
of the second image, ``H`` the true homography. Per run, over the pairs: matches, those within 3 px and 1 px,
the mean length of the residuals within 3 px and their mean vector (a bias: a systematic offset between the
two images' keypoints), their scale about the image's centre in per cent (per axis, the slope of a straight
line fitted to the residual against the position in the second image: a magnification between the two
images' keypoints, which a homography fit takes for a zoom), C3 of the protocol's RANSAC fit and of an
*oracle* fit (a least-squares homography to the matches within 3 px only: what perfect outlier rejection
would give, so the loss that is left is the keypoints' precision), with the median corner errors.

``--runs``: each ``SCALES[/SCALES]``, the first image's input scales then the second image's (default: the
same), ``+`` between a main scale and extra ones pooled by score (``--extra-weight`` on their scores,
default the model's), e.g.
``2.8/1.12`` runs the reference at x2.8 and the zoomed view at x1.12 only (the ideal pairing for a 2.5x
zoom). ``--views``: the pairs ``1-V`` of those views (``3``, ``2-5``, ``2,3``; default all). The network runs
on the CPU at ``--precision`` (default: the model's setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from kp2d.data.hpatches import HPatchesDataset
from kp2d.errors import ConfigError, Kp2dError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.eval.metrics import CORRECTNESS_THRESHOLDS, corner_error, protocol_matches, ransac_homography
from kp2d.eval.settings import opencv_detector, pair_view, parse_baselines, parse_shapes, parse_views
from kp2d.geometry import warp_points_numpy
from kp2d.io.inference import PRECISIONS, check_descriptor_sampling, parse_extra_weight
from kp2d.io.weights import DEFAULT_MODEL
from kp2d.models.keypoint_net import load_keypoint_net

WITHIN = 3.0  # px: the protocol's RANSAC threshold, and what counts as a correct match here


def pair_residuals(
    prob1: np.ndarray, desc1: np.ndarray, prob2: np.ndarray, desc2: np.ndarray, homography: np.ndarray,
    size_wh: tuple[int, int], top_k: int, norm: int = cv2.NORM_L2,
) -> dict[str, Any]:
    """One pair's matches and fits; ``prob`` ``(N, 3)`` rows ``(x, y, score)``, ``desc`` ``(N, D)``.

    Returns ``{"matches", "within3", "within1", "residual" (mean length within 3 px, NaN if none), "bias"
    (2,) (mean vector within 3 px), "scale" (2,) (per axis, the slope of the residuals within 3 px against
    their position in image 2, in per cent; NaN under 8), "corner_error" (the protocol's fit),
    "oracle_error" (the fit to the matches within 3 px; inf under 4)}``.
    """
    matched1, matched2 = protocol_matches(prob1, desc1, prob2, desc2, homography, size_wh, top_k, norm)
    points1, points2 = matched1.astype(np.float64), matched2.astype(np.float64)
    residuals = warp_points_numpy(points1, homography) - points2  # (M, 2)
    lengths = np.linalg.norm(residuals, axis=1)
    good = lengths < WITHIN
    oracle = np.inf
    if good.sum() >= 4:
        fit, _ = cv2.findHomography(points1[good], points2[good], 0)  # least squares, all of them
        oracle = corner_error(fit, homography, size_wh)
    scale = np.full(2, np.nan)
    if good.sum() >= 8:
        centred = points2[good] - np.asarray(size_wh, dtype=np.float64) / 2.0
        for axis in (0, 1):
            scale[axis] = 100.0 * np.polyfit(centred[:, axis], residuals[good, axis], 1)[0]
    estimate = ransac_homography(matched1, matched2)  # the protocol's fit, of the same matches
    return {
        "matches": len(points1),
        "within3": int(good.sum()),
        "within1": int((lengths < 1.0).sum()),
        "residual": float(lengths[good].mean()) if good.any() else np.nan,
        "bias": residuals[good].mean(axis=0) if good.any() else np.full(2, np.nan),
        "scale": scale,
        "corner_error": corner_error(estimate, homography, size_wh),
        "oracle_error": oracle,
    }


def summarize(pairs: list[dict[str, Any]]) -> dict[str, float]:  # "pairs" is a count, the rest means
    """Means over pairs (C3 as the fraction of pairs within 3 px, medians of the corner errors)."""
    column = {
        key: np.array([pair[key] for pair in pairs], dtype=np.float64)
        for key in pairs[0]
        if key not in ("bias", "scale")
    }
    bias = np.array([pair["bias"] for pair in pairs], dtype=np.float64)
    scale = np.array([pair.get("scale", np.full(2, np.nan)) for pair in pairs], dtype=np.float64)
    threshold = CORRECTNESS_THRESHOLDS[1]
    return {
        "pairs": float(len(pairs)),
        "matches": column["matches"].mean(),
        "within3": column["within3"].mean(),
        "within1": column["within1"].mean(),
        "residual": np.nanmean(column["residual"]) if np.isfinite(column["residual"]).any() else np.nan,
        "bias_x": np.nanmean(bias[:, 0]) if np.isfinite(bias).any() else np.nan,
        "bias_y": np.nanmean(bias[:, 1]) if np.isfinite(bias).any() else np.nan,
        "scale_x": np.nanmean(scale[:, 0]) if np.isfinite(scale).any() else np.nan,
        "scale_y": np.nanmean(scale[:, 1]) if np.isfinite(scale).any() else np.nan,
        "c3": float((column["corner_error"] <= threshold).mean()),
        "oracle_c3": float((column["oracle_error"] <= threshold).mean()),
        "median_corner": float(np.median(column["corner_error"])),
        "median_oracle": float(np.median(column["oracle_error"])),
    }


def parse_run(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"2.8+1.25/1.12"`` → ``((2.8, 1.25), (1.12,))``; ConfigError on anything else."""
    sides = text.split("/")
    try:
        if len(sides) > 2:
            raise ValueError
        scales = [tuple(float(value) for value in side.split("+")) for side in sides]
        if any(not (0 < scale < math.inf) for side in scales for scale in side):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--runs: '{text}' must be scales > 0 joined by + with one optional /, e.g. "
                          "2.8+1.25 or 2.8/1.12") from None
    return scales[0], scales[-1]


def main(argv: list[str] | None = None) -> int:
    """Print one table row per run and baseline; 2 with a one-line error for a user's mistake."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"shipped name or checkpoint (default {DEFAULT_MODEL})")
    parser.add_argument("--hpatches", required=True, type=Path, metavar="DIR")
    parser.add_argument("--runs", nargs="+", default=None, metavar="RUN",
                        help="SCALES[/SCALES] each (default: the model's recorded scales)")
    parser.add_argument("--baselines", default=None, help="also sift and / or orb, comma-separated")
    parser.add_argument("--views", default=None, help="only the pairs 1-V of these views, e.g. 3 or 2,3")
    parser.add_argument("--extra-weight", default=None, metavar="W",
                        help="on the extra scales' scores (default: the model's setting)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32, bf16 or auto (default: the model's setting)")
    parser.add_argument("--descriptor-sampling", default=None, metavar="{original,centred}",
                        help="how descriptors are read from the dense map (default: the model's setting)")
    parser.add_argument("--shape", default="320x240", metavar="WxH", help="default 320x240")
    parser.add_argument("--top-k", default=None, metavar="K", help="default 300 at 320x240, else 1000")
    args = parser.parse_args(argv)
    try:
        ((width, height, top_k),) = parse_shapes([args.shape], [args.top_k] if args.top_k else None)
        views = None if args.views is None else parse_views(args.views)
        if width % 8 or height % 8:
            raise ConfigError(f"--shape {width}x{height}: KeyPointNet needs width and height multiples of 8")
        weight = None if args.extra_weight is None else parse_extra_weight(args.extra_weight)
        dataset = HPatchesDataset(args.hpatches, (width, height))
        if not len(dataset):
            raise ConfigError(f"no sequences in {args.hpatches}")
        model = load_keypoint_net(args.model)
        if args.descriptor_sampling is not None:
            sampling = check_descriptor_sampling(args.descriptor_sampling, "--descriptor-sampling")
            settings = dataclasses.replace(model.inference_settings, descriptor_sampling=sampling)
            model.inference_settings = settings
        settings = model.inference_settings
        runs = args.runs or ["+".join(f"{scale:g}" for scale in settings.scales)]
        detectors: dict[str, Any] = {}
        for text in runs:
            sides = [
                KeyPointNetDetector(model, "cpu", scale_factor=scales[0], extra_scales=scales[1:],
                                    extra_rotations=(), extra_weight=weight, precision=args.precision)
                for scales in parse_run(text)
            ]
            detectors[text] = sides
        for method in parse_baselines(args.baselines, None):
            detectors[method.upper()] = [opencv_detector(method, top_k)] * 2
        found: dict[str, list[dict[str, Any]]] = {name: [] for name in detectors}
        with torch.inference_mode():
            for index in range(len(dataset)):
                sample = dataset[index]
                chosen = [
                    p for p, name in enumerate(sample.pair_names) if views is None or pair_view(name) in views
                ]
                if not chosen:
                    continue
                for name, (first, second) in detectors.items():
                    reference = first(sample.images[:1])[0]
                    others = second(sample.images[1:][chosen])
                    for p, (prob2, desc2) in zip(chosen, others, strict=True):
                        found[name].append(pair_residuals(*reference, prob2, desc2, sample.homographies[p],
                                                          (width, height), top_k, first.norm))
        if not any(found.values()):
            raise ConfigError(f"no pair of views {args.views} in {args.hpatches}")
    except (Kp2dError, OSError) as error:
        print(f"match_residuals: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.hpatches.name}, {width}x{height}, top {top_k}; residuals in pixels of the second image\n")
    print("| run | pairs | matches | within 3 / 1 px | residual | bias (x, y) | scale (x, y), % | C3 | "
          "oracle C3 | median corner error: fit / oracle |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, pairs in found.items():
        s = summarize(pairs)
        print(f"| {name} | {s['pairs']:.0f} | {s['matches']:.1f} | {s['within3']:.1f} / {s['within1']:.1f} | "
              f"{s['residual']:.2f} | ({s['bias_x']:+.2f}, {s['bias_y']:+.2f}) | "
              f"({s['scale_x']:+.2f}, {s['scale_y']:+.2f}) | {s['c3']:.3f} | "
              f"{s['oracle_c3']:.3f} | {s['median_corner']:.2f} / {s['median_oracle']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
