"""A cheaper KeyPointNet (``model.stem``, ``head_rank``, ``block2``, ``backbone_rank``) from other weights.

    python scripts/factorise_weights.py lite litefast --out litefast_init.pt
    python scripts/factorise_weights.py litefast liteslim --out liteslim_init.pt

Every layer the two networks share keeps the source's weights. Each head's first layer (``convDa``,
``convPa``, ``convFa``: a 3x3 conv and its BatchNorm) becomes the rank-r Tucker factorisation of the folded
conv (truncated higher-order SVD along its output and input channels: 1x1 into r channels, a 3x3 core,
1x1 out with the folded bias), close to the source before any training. With ``backbone_rank``, each of
``conv3a`` … ``conv4b`` becomes the same factorisation of its conv, its BatchNorm kept. A strided second
block's ``conv2a`` holds the source's 3x3 kernel in its first three rows and columns, so that it computes
the source's ``conv2a`` at every other pixel. A strided first block has no counterpart in the source and
starts from the target's random initialisation (seed 0); ``kp2d train`` with the source as
``train.teacher`` then learns it and adjusts the rest.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from kp2d.config import PAPER_LAYOUT, WEIGHT_LAYOUT, load_config
from kp2d.errors import Kp2dError, user_message
from kp2d.io.checkpoint import save_checkpoint
from kp2d.models.fast import fold_conv_bn
from kp2d.models.keypoint_net import build_keypoint_net, load_keypoint_net

HEADS = ("convDa", "convPa", "convFa")
STEM = ("conv1a", "conv1b")
DEEP = ("conv3a", "conv3b", "conv4a", "conv4b")


def tucker_factors(
    weight: torch.Tensor, rank: int, in_rank: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight (O, I, k, k)`` ≈ ``out (O, r) · core (r, s, k, k) · in (s, I)`` by truncated HOSVD.

    ``r`` is ``rank``, ``s`` is ``in_rank`` (``None``: ``rank``). ``out`` and ``in`` are the leading left
    singular vectors of the output- and input-channel unfoldings; the core is the weight projected onto
    both. Exact when the ranks are at least the channel counts.
    """
    w = weight.detach().double()
    out_channels, in_channels = w.shape[:2]
    in_rank = rank if in_rank is None else in_rank
    out_basis = torch.linalg.svd(w.reshape(out_channels, -1), full_matrices=False)[0][:, :rank]
    in_unfolding = w.transpose(0, 1).reshape(in_channels, -1)
    in_basis = torch.linalg.svd(in_unfolding, full_matrices=False)[0][:, :in_rank]
    core = torch.einsum("oikl,or,is->rskl", w, out_basis, in_basis)
    return out_basis, core, in_basis.T


def _layout(net: nn.Module) -> dict:
    return {name: getattr(net, name, plain) for name, plain in PAPER_LAYOUT.items()}


def _set_factors(layers: nn.Sequential, weight: torch.Tensor) -> None:
    """``layers``' 1x1, 3x3 and 1x1 convs (its first three) set to the Tucker factors of ``weight``."""
    first, middle, last = layers[:3]
    out_basis, core, in_basis = tucker_factors(weight, middle.out_channels, middle.in_channels)
    first.weight.copy_(in_basis[:, :, None, None].float())
    middle.weight.copy_(core.float())
    last.weight.copy_(out_basis[:, :, None, None].float())


def factorise(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy ``source``'s weights into ``target``, factorised where it differs; returns the layers left random.

    Raises:
        Kp2dError: ``source`` is already cheaper than ``target`` somewhere (a strided block, or factorised
            layers of another rank), which cannot be undone.
    """
    have, want = _layout(source), _layout(target)
    for name, plain in WEIGHT_LAYOUT.items():
        # a strided stem is learned afresh, so it may differ
        if name != "stem" and have[name] != plain and have[name] != want[name]:
            raise Kp2dError(f"the source has {name} {have[name]} and the target {want[name]}: start from a "
                            f"network with {name} {plain} or {want[name]}")
    rank = target.head_rank if have["head_rank"] != want["head_rank"] else 0
    if rank and rank > target.convDa[2].out_channels:
        raise Kp2dError(f"head_rank {rank} is more than the heads' {target.convDa[2].out_channels} channels")
    deep = have["backbone_rank"] != want["backbone_rank"]
    strided2 = have["block2"] != want["block2"]
    random = list(STEM) if have["stem"] != want["stem"] else []
    skip = set(random) | (set(HEADS) if rank else set()) | (set(DEEP) if deep else set())
    skip |= {"conv2a"} if strided2 else set()
    state = target.state_dict()
    for key, value in source.state_dict().items():
        if key.split(".")[0] in skip:
            continue
        if key not in state or state[key].shape != value.shape:
            raise Kp2dError(f"{key}: the source's {tuple(value.shape)} does not fit the target's "
                            f"{tuple(state[key].shape) if key in state else 'nothing'} (same width needed)")
        state[key] = value
    target.load_state_dict(state)
    with torch.no_grad():
        if strided2:  # the 3x3 kernel at taps 0..2 of the 4x4 one: source conv2a at the even pixels
            target.conv2a[0].weight.zero_()
            target.conv2a[0].weight[:, :, :3, :3] = source.conv2a[0].weight
            target.conv2a[1].load_state_dict(source.conv2a[1].state_dict())
        for name in DEEP if deep else ():
            conv, norm = getattr(source, name)
            _set_factors(getattr(target, name), conv.weight)
            getattr(target, name)[3].load_state_dict(norm.state_dict())
        for name in HEADS if rank else ():
            conv = fold_conv_bn(*getattr(source, name))
            _set_factors(getattr(target, name), conv.weight)
            getattr(target, name)[2].bias.copy_(conv.bias)
    return random


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="shipped name or checkpoint of the network to start from (e.g. lite)")
    parser.add_argument("config", help="preset or YAML of the cheaper network (e.g. litefast)")
    parser.add_argument("--out", required=True, help="checkpoint to write")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        source = load_keypoint_net(args.source).to(memory_format=torch.contiguous_format)
        torch.manual_seed(0)
        target = build_keypoint_net(config.model).eval()
        random_layers = factorise(source, target)
        save_checkpoint(args.out, config, target, factorised_from=str(args.source))
    except Kp2dError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: stem {target.stem}, head rank {target.head_rank}, block 2 {target.block2}, "
          f"backbone rank {target.backbone_rank:g}; "
          f"random: {', '.join(random_layers) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
