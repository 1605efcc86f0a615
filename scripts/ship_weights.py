"""Make the shipped weights ``src/kp2d/weights/NAME.pt`` from a training checkpoint.

    python scripts/ship_weights.py runs/v4/checkpoints/last.ckpt v4 --note "bsds500, CPU bf16"
    python scripts/ship_weights.py runs/v5/checkpoints/last.ckpt v5 --scale-factor 2

Stores the KeyPointNet state dict in fp16 (``--fp32`` to keep fp32), the checkpoint's config, a provenance
record (step, epoch, the run's wall time and hardware as given) and reference outputs on a fixed photo
(see :mod:`kp2d.deploy.shipping`); prints how far the shipped weights are from the checkpoint on that photo.
``--scale-factor S`` records ``inference: {scale_factor: S}``: ``extract``, ``kp2d detect|match|track|eval``
then run the model on images resized by S unless told otherwise; ``--extra-scales 1`` records more scales
whose keypoints ``extract`` and ``kp2d detect|match|eval`` pool with the main scale's, ``--extra-rotations
45,-45`` turned copies of the image pooled likewise, ``--precision auto`` that the model runs under bf16
autocast where the CPU has AVX512-BF16 / AMX (or the GPU bf16).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path

import torch

from kp2d.checks import check_output_path, check_scale_factor_option
from kp2d.deploy.shipping import make_pretrained, reference_error
from kp2d.errors import ConfigError, Kp2dError, user_message
from kp2d.io.checkpoint import load_checkpoint, training_steps
from kp2d.io.inference import (
    DESCRIPTOR_SAMPLINGS,
    INTERPOLATIONS,
    PRECISIONS,
    InferenceSettings,
    check_descriptor_sampling,
    check_interpolation,
    parse_extra_rotations,
    parse_extra_scales,
    parse_extra_suppression,
    parse_extra_weight,
)
from kp2d.models.keypoint_net import load_keypoint_net

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "kp2d" / "weights"
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_name(name: str) -> None:
    """ConfigError unless ``name`` is a plain file stem that ``kp2d`` resolves as a pretrained name."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"NAME must be a plain name (letters, digits, _, - and ., not starting with .), got {name!r}"
        )
    if name.endswith((".pt", ".ckpt", ".pth")):
        raise ConfigError(f"NAME is given without a suffix ({Path(name).stem!r}, not {name!r})")


def provenance_of(checkpoint_path: Path, note: str) -> dict:
    """The shipped file's provenance record: the run's step and epoch, its fine-tuning source, ``note``.

    A shipped file given as the source (new settings for the same weights) keeps its record, ``note``
    appended to its note.
    """
    extra = load_checkpoint(checkpoint_path).extra
    if isinstance(extra.get("provenance"), dict):
        provenance = dict(extra["provenance"])
        provenance["note"] = "; ".join(text for text in (provenance.get("note", ""), note) if text)
        return provenance
    provenance = {
        "source": checkpoint_path.name,
        "step": extra.get("step"),  # steps of this run
        "epoch": extra.get("epoch"),
        "note": note,
        "made_with": f"torch {torch.__version__}, {platform.machine()}",
    }
    init_from = extra.get("init_from")
    if isinstance(init_from, dict):  # a fine-tuning run (kp2d train --init): count the steps before it too
        provenance["init_from"] = init_from.get("source")
        provenance["steps_before"] = init_from.get("steps_before")
    return provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name", help="v0 … v4 (file name under src/kp2d/weights)")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default fp16)")
    parser.add_argument("--note", default="", help="free text: data, hardware, wall time, config changes")
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        metavar="S",
        help="record that the model runs on images resized by S (default: the checkpoint's setting, 1 "
        "when it records none)",
    )
    parser.add_argument(
        "--extra-scales",
        default=None,
        metavar="LIST",
        help="record more scales the model also runs at, e.g. 1 (needs --scale-factor; default: none)",
    )
    parser.add_argument(
        "--extra-rotations",
        default=None,
        metavar="LIST",
        help="record angles in degrees of turned copies the model also runs on, e.g. 45,-45 (needs "
        "--scale-factor; default: none)",
    )
    parser.add_argument(
        "--extra-weight",
        default=None,
        metavar="W",
        help="record the factor on the extra scales' scores before the pooling, e.g. 0.9 "
        "(needs --scale-factor and --extra-scales; default: 1)",
    )
    parser.add_argument(
        "--extra-suppression",
        default=None,
        metavar="PX",
        help="record the distance in pixels within which a main-scale keypoint scoring at least as much "
        "leaves out an extra scale's, e.g. 4 (needs --scale-factor and --extra-scales; default: 0, none)",
    )
    parser.add_argument(
        "--descriptor-sampling",
        default=None,
        metavar="{" + ",".join(DESCRIPTOR_SAMPLINGS) + "}",
        help="record how descriptors are read from the dense map: centred (at the pixels each cell covers) "
        "or original (the original code's; needs --scale-factor; default: original)",
    )
    parser.add_argument(
        "--interpolation",
        default=None,
        metavar="{" + ",".join(INTERPOLATIONS) + "}",
        help="record how images are enlarged to the network's input: bilinear or bicubic (sharper; needs "
        "--scale-factor; default: bilinear)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="record the precision the model runs at: fp32, bf16 or auto (bf16 where the hardware has it; "
        "needs --scale-factor; default: fp32)",
    )
    args = parser.parse_args(argv)
    try:
        check_name(args.name)
        inference = None
        extras = (
            ("--extra-scales", args.extra_scales),
            ("--extra-rotations", args.extra_rotations),
            ("--precision", args.precision),
            ("--extra-weight", args.extra_weight),
            ("--extra-suppression", args.extra_suppression),
            ("--descriptor-sampling", args.descriptor_sampling),
            ("--interpolation", args.interpolation),
        )
        for option, value in extras:
            if value is not None and args.scale_factor is None:
                raise ConfigError(f"{option} needs --scale-factor (the main scale)")
        if args.scale_factor is not None:
            check_scale_factor_option(args.scale_factor)
            extra = () if args.extra_scales is None else parse_extra_scales(args.extra_scales)
            turns = () if args.extra_rotations is None else parse_extra_rotations(args.extra_rotations)
            weight = 1.0 if args.extra_weight is None else parse_extra_weight(args.extra_weight)
            if weight != 1 and not extra:
                raise ConfigError("--extra-weight weighs the extra scales' scores: give --extra-scales too")
            suppression = args.extra_suppression
            radius = 0.0 if suppression is None else parse_extra_suppression(suppression)
            if radius and not extra:
                raise ConfigError("--extra-suppression thins the extra scales' keypoints: add --extra-scales")
            inference = InferenceSettings(
                args.scale_factor, extra, turns, args.precision or "fp32", weight, radius,
                check_descriptor_sampling(args.descriptor_sampling or "original", "--descriptor-sampling"),
                check_interpolation(args.interpolation or "bilinear", "--interpolation"),
            )
        target = WEIGHTS / f"{args.name}.pt"
        check_output_path(target, "NAME")
        provenance = provenance_of(args.checkpoint, args.note)
        out = make_pretrained(
            args.checkpoint, target, torch.float32 if args.fp32 else torch.float16, provenance, inference
        )
        shipped = torch.load(out, map_location="cpu", weights_only=True)
        diff = reference_error(load_keypoint_net(out), shipped["reference"])
        written = load_checkpoint(out)
        steps = training_steps(written)
    except (Kp2dError, OSError) as error:
        print(f"ship_weights: error: {user_message(error)}", file=sys.stderr)
        return 2
    steps_text = "training steps unknown" if steps is None else f"{steps} training steps in all"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), {steps_text}; max diff vs checkpoint: "
          f"score {diff['score']:.2e}, coord {diff['coord']:.2e} px, desc {diff['desc']:.2e}; "
          f"inference: scale_factor {written.inference.scale_factor:g}"
          + "".join(f", extra scale {scale:g}" for scale in written.inference.extra_scales)
          + "".join(f", extra rotation {angle:g}" for angle in written.inference.extra_rotations)
          + ("" if (weight := written.inference.extra_weight) == 1 else f", extra scales' scores x{weight:g}")
          + ("" if not (radius := written.inference.extra_suppression) else f", suppression {radius:g} px")
          + ("" if (way := written.inference.descriptor_sampling) == "original" else f", descriptors {way}")
          + ("" if (mode := written.inference.interpolation) == "bilinear" else f", {mode} input")
          + f", precision {written.inference.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
