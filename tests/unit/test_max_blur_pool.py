"""``model.pooling: maxblur``: a 2x2 pooling whose output follows the image between grid positions."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kp2d.io.checkpoint import load_checkpoint
from kp2d.io.weights import resolve_model_path
from kp2d.models.keypoint_net import KeyPointNet, MaxBlurPool, build_keypoint_net
from network_helpers import randomised_batchnorm, script_module


def test_a_ramp_by_hand():
    # max over 2x2 at stride 1 (the last row and column repeated): rows [5 6 7 7], [9 10 11 11], ...;
    # output (0, 0) blurs m[0, 0] = 5, m[0, 1] = 6, m[1, 0] = 9, m[1, 1] = 10 with weights 9, 3, 3, 1 (/16)
    ramp = torch.arange(16.0).view(1, 1, 4, 4)
    expected = torch.tensor([[[[6.25, 7.75], [12.25, 13.75]]]])
    torch.testing.assert_close(MaxBlurPool()(ramp), expected)


def test_a_constant_stays_and_the_shape_halves_per_channel():
    image = torch.full((2, 5, 8, 12), 0.7)
    pooled = MaxBlurPool()(image)
    assert pooled.shape == (2, 5, 4, 6)
    torch.testing.assert_close(pooled, torch.full_like(pooled, 0.7))


def test_the_pooled_impulse_is_centred_on_the_impulse_at_every_phase():
    """A bright pixel's pooled response, weighted by place (output i sits at input 2i + 0.5), lies on it."""
    centres = torch.arange(8) * 2 + 0.5
    for pool, expected in ((MaxBlurPool(), [4.0, 5.0, 6.0, 7.0]), (nn.MaxPool2d(2, 2), [4.5, 4.5, 6.5, 6.5])):
        found = []
        for column in (4, 5, 6, 7):
            image = torch.zeros(1, 1, 16, 16)
            image[..., 8, column] = 1.0
            response = pool(image)[0, 0].sum(dim=0)  # (8,) over output columns
            found.append(float((response * centres).sum() / response.sum()))
        assert found == expected  # the max-pool's stays put within a cell, then jumps by 2


def test_it_adds_no_weights_so_any_checkpoint_loads_into_it():
    checkpoint = load_checkpoint(resolve_model_path("liteslim"))
    plain = build_keypoint_net(checkpoint.model)
    blurred = build_keypoint_net(dataclasses.replace(checkpoint.model, pooling="maxblur"))
    assert isinstance(blurred.pool, MaxBlurPool) and isinstance(plain.pool, nn.MaxPool2d)
    assert list(blurred.state_dict()) == list(plain.state_dict())
    blurred.load_state_dict(checkpoint.state_dict)


def test_the_paper_layout_with_it_runs_every_pool_blurred():
    torch.manual_seed(0)
    net = randomised_batchnorm(KeyPointNet(width=0.25, pooling="maxblur")).eval()
    out = net(torch.rand(1, 3, 32, 48))
    assert out.score.shape == (1, 1, 4, 6) and out.desc.shape == (1, 256, 8, 12)
    assert net.pooling == "maxblur"


def test_the_weight_scripts_carry_weights_into_it(tmp_path):
    """It has no weights, so narrowing and factorising start it as they start the max-pool's layout."""
    narrow, factorise = script_module("narrow_weights"), script_module("factorise_weights")
    (tmp_path / "liteblur.yaml").write_text("extends: lite\nname: liteblur\nmodel:\n  pooling: maxblur\n")
    assert narrow.main(["v4", str(tmp_path / "liteblur.yaml"), "--out", str(tmp_path / "narrow.pt")]) == 0
    assert load_checkpoint(tmp_path / "narrow.pt").model.pooling == "maxblur"
    model = load_checkpoint(resolve_model_path("liteslim")).model
    source = build_keypoint_net(model)
    target = build_keypoint_net(dataclasses.replace(model, pooling="maxblur"))
    assert factorise.factorise(source, target) == []  # every layer copied, none left random
