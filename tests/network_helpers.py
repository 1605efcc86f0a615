"""Helpers for tests of network layouts and the scripts that convert weights between them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_module(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomised_batchnorm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``net`` in eval mode with random BatchNorm statistics and scales, so that channel order and folding
    matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return net.eval()


def lite_distillation(**loss_fields: float) -> tuple:
    """``(SiameseLoss, student, teacher)``: ``lite``'s config with these ``loss`` fields, its network as
    the student and a random half-width teacher, both in eval mode (repeated forwards agree), seed 0."""
    from kp2d.config import load_config
    from kp2d.models.keypoint_net import KeyPointNet, build_keypoint_net
    from kp2d.train.step import SiameseLoss

    torch.manual_seed(0)
    config = load_config("lite")
    for name, value in loss_fields.items():
        setattr(config.loss, name, value)
    student = build_keypoint_net(config.model).eval()
    teacher = KeyPointNet(width=0.5, do_upsample=False).eval()
    return SiameseLoss(student, None, config, teacher=teacher), student, teacher
