"""Make the shipped weights ``src/kp2d/weights/NAME.pt`` from a training checkpoint.

    python scripts/ship_weights.py runs/v4/checkpoints/last.ckpt v4 --note "bsds500, CPU bf16"

Stores the KeyPointNet state dict in fp16 (``--fp32`` to keep fp32), the checkpoint's config, a provenance
record (step, epoch, the run's wall time and hardware as given) and reference outputs on a fixed photo
(see :mod:`kp2d.pretrained`); prints how far the shipped weights are from the checkpoint on that photo.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from kp2d.checkpoint import load_checkpoint, load_keypoint_net, training_steps
from kp2d.pretrained import make_pretrained, reference_error

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "kp2d" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name", help="v0 … v4 (file name under src/kp2d/weights)")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default fp16)")
    parser.add_argument("--note", default="", help="free text: data, hardware, wall time, config changes")
    args = parser.parse_args()

    extra = load_checkpoint(args.checkpoint).extra
    provenance = {
        "source": args.checkpoint.name,
        "step": extra.get("step"),  # steps of this run
        "epoch": extra.get("epoch"),
        "note": args.note,
        "made_with": f"torch {torch.__version__}, {platform.machine()}",
    }
    if "init_from" in extra:  # a fine-tuning run (kp2d train --init): count the steps before it too
        provenance["init_from"] = extra["init_from"].get("source")
        provenance["steps_before"] = extra["init_from"].get("steps_before")
    out = make_pretrained(
        args.checkpoint,
        WEIGHTS / f"{args.name}.pt",
        torch.float32 if args.fp32 else torch.float16,
        provenance,
    )
    shipped = torch.load(out, map_location="cpu", weights_only=True)
    error = reference_error(load_keypoint_net(out), shipped["reference"])
    steps = training_steps(load_checkpoint(out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), {steps} training steps in all; "
          f"max diff vs checkpoint: score {error['score']:.2e}, coord {error['coord']:.2e} px, "
          f"desc {error['desc']:.2e}")


if __name__ == "__main__":
    main()
