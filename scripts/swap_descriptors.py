"""Which half of a network makes the difference? One network's keypoints with another's descriptors.

    python scripts/swap_descriptors.py --keypoints lite --descriptors runs/x/checkpoints/last.ckpt \
        --hpatches ../shared/data/adobe-panoramas --shape 320x240 --top-k 300

Runs the HPatches protocol of ``kp2d eval`` (same detector, selection and metrics) on a network that takes
its keypoints and scores from ``--keypoints`` and samples the dense descriptors of ``--descriptors`` at them,
both on the same resized input. With one network given twice it is that network. Prints a Markdown
table, a row per folder. Input scale: ``--scale-factor``, else the keypoint network's recorded one; precision:
``--precision`` (``auto``: the keypoint network's recorded one; bf16 runs both networks under bf16 autocast).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kp2d.data.hpatches import HPatchesDataset
from kp2d.errors import ConfigError, Kp2dError
from kp2d.eval.hpatches import TABLE_HEADER, KeyPointNetDetector, evaluate_hpatches, table_row
from kp2d.eval.settings import check_eval_scale_factor, parse_shapes
from kp2d.features.dense import KeyPointNetOutput, sample_descriptors
from kp2d.features.extraction import resolve_backend, resolved_precision
from kp2d.io.inference import model_scale_factor
from kp2d.models.keypoint_net import KeyPointNet, load_keypoint_net


class SwappedDescriptors:
    """A backend: ``(B, C, H, W)`` in [0, 1] → the keypoint network's output, descriptors from the other.

    ``desc`` is ``(B, 256, Hc, Wc)``: the descriptor network's dense map sampled at the keypoint network's
    ``coord`` and L2-normalised (as :meth:`KeyPointNet.describe`).
    """

    def __init__(self, keypoint_net: KeyPointNet, descriptor_net: KeyPointNet, precision: str) -> None:
        if keypoint_net.in_channels != 3 or descriptor_net.in_channels != 3:
            raise ConfigError("both networks must take colour images (model.use_color: true)")
        self.keypoint_net, self.descriptor_net = keypoint_net.eval(), descriptor_net.eval()
        self.precision = resolved_precision(keypoint_net, precision)
        self.keypoint_backend = resolve_backend(keypoint_net, None, self.precision)
        self.name = f"keypoints of {keypoint_net.name}, descriptors of {descriptor_net.name}"

    def __call__(self, images: torch.Tensor) -> KeyPointNetOutput:
        run = self.keypoint_backend if self.keypoint_backend is not None else self.keypoint_net.describe
        with torch.inference_mode():
            out = run(images)
            bf16 = self.precision == "bf16"
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
                dense = self.descriptor_net(images).desc
            desc = sample_descriptors(dense.float(), out.coord, images.shape[-2], images.shape[-1])
        return out._replace(desc=desc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keypoints", required=True, metavar="MODEL", help="shipped name or checkpoint")
    parser.add_argument("--descriptors", required=True, metavar="MODEL", help="shipped name or checkpoint")
    parser.add_argument("--hpatches", required=True, type=Path, nargs="+", metavar="DIR")
    parser.add_argument("--shape", default="320x240", metavar="WxH", help="default 320x240")
    parser.add_argument("--top-k", default=None, metavar="K", help="default 300 at 320x240, else 1000")
    parser.add_argument("--scale-factor", type=float, default=None, metavar="S",
                        help="network input scale (default: the keypoint network's recorded one)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="default: the keypoint network's recorded one")
    args = parser.parse_args(argv)
    try:
        ((width, height, top_k),) = parse_shapes([args.shape], [args.top_k] if args.top_k else None)
        for root in args.hpatches:  # a missing or empty folder stops here, before the networks load
            HPatchesDataset(root, (width, height))
        keypoint_net = load_keypoint_net(args.keypoints)
        keypoint_net.name = Path(args.keypoints).stem
        descriptor_net = load_keypoint_net(args.descriptors)
        descriptor_net.name = Path(args.descriptors).stem
        scale_factor = model_scale_factor(keypoint_net, args.scale_factor)
        check_eval_scale_factor(scale_factor, [(width, height, top_k)])
        swapped = SwappedDescriptors(keypoint_net, descriptor_net, args.precision)
        detector = KeyPointNetDetector(swapped, scale_factor=scale_factor)
        setting = f"input x{scale_factor:g}, {swapped.precision}, {width}x{height}, top {top_k}"
        print(f"{swapped.name}: {setting}\n")
        print(TABLE_HEADER)
        for root in args.hpatches:
            result = evaluate_hpatches(detector, root, (width, height), top_k, progress=False)
            print(table_row(root.name, result), flush=True)
    except Kp2dError as error:
        print(f"swap_descriptors: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
