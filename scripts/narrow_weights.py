"""A narrower KeyPointNet (``model.width`` < 1) from a wider one's weights, for ``kp2d train --init``.

    python scripts/narrow_weights.py v4 lite --out lite_init.pt

Each layer keeps the output channels whose BatchNorm scale ``|gamma|`` is largest (the channels the wider
network leans on most); the next layer keeps the matching input channels. Layers whose input means
something else in the narrow network (the descriptor head when upsampling is switched off) keep the
narrow network's random initialisation (seed 0). IO-Net is not carried over.
"""

from __future__ import annotations

import argparse
import sys

import torch

from kp2d.config import WEIGHT_LAYOUT, load_config
from kp2d.errors import Kp2dError, user_message
from kp2d.io.checkpoint import save_checkpoint
from kp2d.models.keypoint_net import build_keypoint_net, load_keypoint_net

# (layer, the layer whose kept output channels are its input channels; None: the image)
_CHAIN = (
    ("conv1a", None), ("conv1b", "conv1a"), ("conv2a", "conv1b"), ("conv2b", "conv2a"),
    ("conv3a", "conv2b"), ("conv3b", "conv3a"), ("conv4a", "conv3b"), ("conv4b", "conv4a"),
    ("convDa", "conv4b"), ("convPa", "conv4b"), ("convFa", "conv4b"),
)
_OUTPUTS = (("convDb", "convDa"), ("convPb", "convPa"))  # plain convs with 1 / 2 output channels


def _kept(bn: torch.nn.BatchNorm2d, count: int) -> torch.Tensor:
    """Indices of the ``count`` channels with the largest ``|gamma|``, in their original order."""
    return bn.weight.detach().abs().topk(count).indices.sort().values


def narrow(wide: torch.nn.Module, narrow_net: torch.nn.Module) -> list[str]:
    """Copy ``wide``'s weights into ``narrow_net`` channel by channel; returns the layers left random."""
    kept: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, source in _CHAIN:
            wide_conv, wide_bn = getattr(wide, name)
            conv, bn = getattr(narrow_net, name)
            rows = _kept(wide_bn, conv.out_channels)
            cols = kept[source] if source else torch.arange(conv.in_channels)
            conv.weight.copy_(wide_conv.weight[rows][:, cols])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, attr).copy_(getattr(wide_bn, attr)[rows])
            kept[name] = rows
        for name, source in _OUTPUTS:
            wide_conv, conv = getattr(wide, name), getattr(narrow_net, name)
            conv.weight.copy_(wide_conv.weight[:, kept[source]])
            conv.bias.copy_(wide_conv.bias)
    return ["convFaa", "convFbb"] + (["convFb"] if narrow_net.do_upsample else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wide", help="shipped name or checkpoint of the wider network (e.g. v4)")
    parser.add_argument("config", help="preset or YAML of the narrow network (e.g. lite)")
    parser.add_argument("--out", required=True, help="checkpoint to write")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if any(getattr(config.model, name) != plain for name, plain in WEIGHT_LAYOUT.items()):
            raise Kp2dError(f"{args.config} has a strided stem or block, or factorised layers: narrow to "
                            "its plain layout first, then use scripts/factorise_weights.py")
        wide = load_keypoint_net(args.wide)
        torch.manual_seed(0)
        narrow_net = build_keypoint_net(config.model).eval()
        if narrow_net.in_channels != wide.in_channels:
            raise Kp2dError(f"{args.wide} takes {wide.in_channels}-channel images, {args.config} "
                            f"{narrow_net.in_channels}")
        random_layers = narrow(wide, narrow_net)
        save_checkpoint(args.out, config, narrow_net, narrowed_from=str(args.wide))
    except Kp2dError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: width {config.model.width:g}; random: {', '.join(random_layers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
