"""``kp2d eval``: HPatches metrics of a checkpoint, a pretrained model, SIFT/ORB or a random network.

Prints one markdown table per evaluation shape in the original README's layout and optionally writes
``{"320x240": {"repeatability", "localization_error", "c1", "c3", "c5", "mscore", "pairs", ...}, ...}``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from kp2d.eval.settings import (
    OPENCV_METHODS,
    check_eval_memory,
    check_eval_scale_factor,
    opencv_detector,
    parse_baselines,
    parse_shapes,
)
from kp2d.io.inference import DESCRIPTOR_SAMPLINGS, INTERPOLATIONS, PRECISIONS
from kp2d.io.weights import DEFAULT_MODEL

__all__ = ["add_parser", "format_table", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kp2d eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate on HPatches (repeatability, localization, C1/C3/C5, matching score)",
        description="Evaluate keypoints on HPatches-format sequences with the original KP2D protocol.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="FILE", help="KeyPointNet checkpoint file")
    source.add_argument(
        "--model",
        metavar="NAME",
        help="shipped pretrained name (v0..v4) or checkpoint path (default, when no other source is "
        f"given: the shipped default model, now {DEFAULT_MODEL}, with its shipped settings)",
    )
    source.add_argument("--method", choices=OPENCV_METHODS, help="classical OpenCV baseline")
    source.add_argument(
        "--random-init", action="store_true", help="untrained network built from --config (seed 0)"
    )
    parser.add_argument("--config", default=None, help="preset or YAML for --random-init (default v4)")
    parser.add_argument(
        "--hpatches", required=True, metavar="DIR",
        help="folder of HPatches sequences (1.ppm …, H_1_2 …; or Oxford's img1.ppm …, H1to2p …)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        metavar="WxH",
        help="evaluation size, repeatable or comma-separated (default: 320x240 and 640x480)",
    )
    parser.add_argument(
        "--top-k",
        action="append",
        metavar="K",
        help="keypoints per image, one for all shapes or one per shape (default 300 at 320x240, else 1000)",
    )
    parser.add_argument(
        "--subset", choices=("all", "i", "v"), default="all", help="sequences: i_*, v_* or all"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument(
        "--json", metavar="OUT", help="write the results as JSON (the means and each pair's metrics)"
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip pairs with missing or corrupt files")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="image reader threads (0: none)"
    )
    parser.add_argument(
        "--baselines",
        metavar="LIST",
        help="also run these OpenCV methods (sift,orb) in the same run: one more table row each",
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        metavar="S",
        help="run the network on the evaluation images resized by S (e.g. 2: keypoints on a 4-px grid, "
        "4x the compute) and map its keypoints back; default: the model's setting, recorded in its "
        "weights file (1, the original protocol, when it records none)",
    )
    parser.add_argument(
        "--extra-scales",
        default=None,
        metavar="LIST",
        help="more scales to run the network at, every scale's keypoints pooled before the top-k (e.g. "
        "1 beside --scale-factor 2); 'none': one scale; default: the model's setting",
    )
    parser.add_argument(
        "--extra-rotations",
        default=None,
        metavar="LIST",
        help="angles in degrees of turned copies of the images to run the network on as well, keypoints "
        "pooled before the top-k (e.g. 45,-45); 'none': unturned only; default: the model's setting",
    )
    parser.add_argument(
        "--extra-weight",
        default=None,
        metavar="W",
        help="multiply the scores of the extra scales' keypoints by W before the pooling (not the turned "
        "copies') "
        "(e.g. 0.9: they fill in where the main scale finds few); default: the model's setting (1 unless "
        "its weights file records one)",
    )
    parser.add_argument(
        "--descriptor-sampling",
        default=None,
        metavar="{" + ",".join(DESCRIPTOR_SAMPLINGS) + "}",
        help="how descriptors are read from the network's dense map: 'centred' at the pixels each cell "
        "covers, 'original' as the original code; default: the model's setting",
    )
    parser.add_argument(
        "--interpolation",
        default=None,
        metavar="{" + ",".join(INTERPOLATIONS) + "}",
        help="how the images are enlarged to the network's input: 'bicubic' is sharper than 'bilinear'; "
        "default: the model's setting",
    )
    parser.add_argument(
        "--extra-suppression",
        default=None,
        metavar="PX",
        help="leave out an extra scale's keypoint where the main scale has one within PX pixels scoring at "
        "least as much; 'none' or 0: none left out; default: the model's setting (0 unless its weights file "
        "records one)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="fp32 (the plain network), bf16 (bf16 autocast, score and location heads in fp32) or auto (bf16 "
        "on CPUs with AVX512-BF16 / AMX and GPUs with bf16, else fp32); default: the model's setting",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _build_network(args: argparse.Namespace, device):
    """The KeyPointNet to evaluate and its table label."""
    from kp2d.errors import CheckpointError
    from kp2d.models.keypoint_net import load_keypoint_net, untrained_keypoint_net

    if args.random_init:
        config_name = args.config or "v4"
        label = f"random-init ({Path(config_name).stem})"
        return untrained_keypoint_net(config_name).to(device).eval(), label
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        if not path.is_file():
            from kp2d.io.weights import list_pretrained

            hint = f" (shipped weights: --model {path})" if str(path) in list_pretrained() else ""
            raise CheckpointError(f"checkpoint not found: {path}{hint}")
        return load_keypoint_net(path, device), path.stem
    model = args.model if args.model is not None else DEFAULT_MODEL
    return load_keypoint_net(model, device), Path(model).stem


def _inference_settings(args: argparse.Namespace, network, settings: list[tuple[int, int, int]]):
    """The settings to evaluate with: each option when given, else the network's recorded setting."""
    from kp2d.io.inference import (
        InferenceSettings,
        check_descriptor_sampling,
        check_interpolation,
        parse_extra_rotations,
        parse_extra_scales,
        parse_extra_suppression,
        parse_extra_weight,
    )

    recorded = getattr(network, "inference_settings", InferenceSettings())
    scale_factor = args.scale_factor if args.scale_factor is not None else recorded.scale_factor
    if scale_factor != 1:
        name = "--scale-factor" if args.scale_factor is not None else "the model's scale_factor"
        check_eval_scale_factor(scale_factor, settings, name)
    if args.extra_scales is not None:
        extra_scales, name = parse_extra_scales(args.extra_scales), "--extra-scales"
    else:
        extra_scales, name = recorded.extra_scales, "the model's extra_scales"
    for scale in extra_scales:
        check_eval_scale_factor(scale, settings, name)
    if args.extra_rotations is not None:
        extra_rotations = parse_extra_rotations(args.extra_rotations)
    else:
        extra_rotations = recorded.extra_rotations
    precision = args.precision if args.precision is not None else recorded.precision
    weight = parse_extra_weight(args.extra_weight) if args.extra_weight is not None else recorded.extra_weight
    if args.extra_suppression is not None:
        suppression = parse_extra_suppression(args.extra_suppression)
    else:
        suppression = recorded.extra_suppression
    if args.descriptor_sampling is not None:
        sampling = check_descriptor_sampling(args.descriptor_sampling, "--descriptor-sampling")
    else:
        sampling = recorded.descriptor_sampling
    if args.interpolation is not None:
        interpolation = check_interpolation(args.interpolation, "--interpolation")
    else:
        interpolation = recorded.interpolation
    return InferenceSettings(
        scale_factor, extra_scales, extra_rotations, precision, weight, suppression, sampling, interpolation
    )


def _make_detector(args: argparse.Namespace, network, label: str, device, top_k: int, inference):
    from kp2d.eval.hpatches import KeyPointNetDetector

    if args.method is not None:
        return opencv_detector(args.method, top_k)
    return KeyPointNetDetector(
        network, device, name=label, scale_factor=inference.scale_factor,
        extra_scales=inference.extra_scales, extra_rotations=inference.extra_rotations,
        precision=inference.precision, extra_weight=inference.extra_weight,
        extra_suppression=inference.extra_suppression, interpolation=inference.interpolation,
    )


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The original README's markdown table (3 decimals) for one evaluation shape, a row per method."""
    from kp2d.eval.hpatches import TABLE_HEADER, table_row

    width, height = rows[0][1]["shape"]
    lines = [f"Evaluation for ({width}, {height}):", "", TABLE_HEADER]
    lines += [table_row(label, result) for label, result in rows]
    lines.append("")
    for label, result in rows:
        lines.append(
            f"{label}: top {result['top_k']}, {result['pairs']} pairs evaluated ({len(result['skipped'])} "
            f"skipped) in {result['seconds']:.1f} s ({result['pairs_per_second']:.1f} pairs/s)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the tables, write the JSON; returns the exit status."""
    from kp2d.errors import ConfigError
    from kp2d.eval.hpatches import evaluate_hpatches
    from kp2d.features.extraction import resolved_precision
    from kp2d.runtime import resolve_device

    if args.config is not None and not args.random_init:
        raise ConfigError("--config only applies with --random-init")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    settings = parse_shapes(args.shape, args.top_k)
    hpatches = Path(args.hpatches)
    if not hpatches.is_dir():
        from kp2d.errors import DataError

        raise DataError(f"HPatches folder not found: {hpatches}")
    json_out = Path(args.json) if args.json else None
    if json_out is not None:
        from kp2d.checks import check_output_path

        check_output_path(json_out, "--json")  # before the evaluation, so that its results are not lost

    network, label, device, inference = None, (args.method or "").upper(), None, None
    if args.method is None:
        device = resolve_device(args.device)
        network, label = _build_network(args, device)
        bad = [f"{w}x{h}" for w, h, _ in settings if w % 8 or h % 8]
        if bad:
            raise ConfigError(f"--shape {', '.join(bad)}: KeyPointNet needs width and height multiples of 8")
        inference = _inference_settings(args, network, settings)
        # the detector and its backend read the descriptor sampling from the network's own settings
        network.inference_settings = replace(
            network.inference_settings, descriptor_sampling=inference.descriptor_sampling
        )
        # the row names the settings, from the weights file or the options, and the precision that runs here
        label += inference.label(resolved_precision(network, inference.precision))
        check_eval_memory(settings, max(inference.scales), device)
    elif args.scale_factor is not None and args.scale_factor != 1:
        raise ConfigError("--scale-factor applies to KeyPointNet, not to --method")
    elif args.extra_scales is not None:
        raise ConfigError("--extra-scales applies to KeyPointNet, not to --method")
    elif args.extra_rotations is not None:
        raise ConfigError("--extra-rotations applies to KeyPointNet, not to --method")
    elif args.precision is not None:
        raise ConfigError("--precision applies to KeyPointNet, not to --method")
    elif args.extra_weight is not None:
        raise ConfigError("--extra-weight applies to KeyPointNet, not to --method")
    elif args.extra_suppression is not None:
        raise ConfigError("--extra-suppression applies to KeyPointNet, not to --method")
    elif args.descriptor_sampling is not None:
        raise ConfigError("--descriptor-sampling applies to KeyPointNet, not to --method")
    elif args.interpolation is not None:
        raise ConfigError("--interpolation applies to KeyPointNet, not to --method")

    baselines = parse_baselines(args.baselines, args.method)

    def evaluate(detector, shape: tuple[int, int], top_k: int) -> dict[str, Any]:
        return evaluate_hpatches(
            detector,
            hpatches,
            size_wh=shape,
            top_k=top_k,
            subset=args.subset,
            skip_bad=args.skip_bad,
            progress=not args.no_progress,
            num_workers=args.workers,
        )

    results: dict[str, Any] = {}
    for width, height, top_k in settings:
        key = f"{width}x{height}"
        detector = _make_detector(args, network, label, device, top_k, inference)
        result = evaluate(detector, (width, height), top_k)
        results[key] = {**result, "model": label, "device": str(device or "cpu")}
        if inference is not None:
            results[key]["inference"] = inference.to_entry()
            results[key]["precision"] = detector.precision  # what ran here: fp32 or bf16
        rows = [(label, result)]
        for method in baselines:
            baseline = evaluate(opencv_detector(method, top_k), (width, height), top_k)
            results.setdefault("baselines", {}).setdefault(method, {})[key] = {
                **baseline, "model": method.upper(), "device": "cpu"
            }
            rows.append((method.upper(), baseline))
        print(format_table(rows), flush=True)
        print(flush=True)

    if json_out is not None:
        from kp2d.io.files import write_json

        write_json(json_out, results)
    return 0


