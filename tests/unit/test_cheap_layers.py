"""The cheaper layouts (``model.stem``, ``head_rank``, ``block2``, ``backbone_rank``), the blurred pooling
(``model.pooling``), and their start from other weights."""

from __future__ import annotations

import pytest
import torch

from kp2d.config import ModelConfig, config_from_dict, load_config
from kp2d.errors import ConfigError, Kp2dError
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.models.fast import build_torch_backend, fold_conv_bn
from kp2d.models.keypoint_net import KeyPointNet, build_keypoint_net, keypoint_net_from
from network_helpers import randomised_batchnorm, script_module


@pytest.fixture(scope="module")
def factorise():
    return script_module("factorise_weights")


def test_the_strided_stem_is_one_stride_2_conv_then_conv1b_without_a_pool():
    torch.manual_seed(0)
    net = randomised_batchnorm(KeyPointNet(width=0.5, do_upsample=False, stem="strided"))
    assert net.conv1a[0].kernel_size == (4, 4) and net.conv1a[0].stride == (2, 2)
    image = torch.rand(1, 3, 64, 96)
    out = net(image)
    assert out.score.shape == (1, 1, 8, 12) and out.coord.shape == (1, 2, 8, 12)
    # the same network by hand: the first block at half resolution, then the paper's blocks as they are
    relu = net.relu
    x = (image - 0.5) * 0.225
    x = relu(net.conv1b(relu(net.conv1a(x))))
    assert x.shape[-2:] == (32, 48)
    x = net.pool(relu(net.conv2b(relu(net.conv2a(x)))))
    x = net.pool(relu(net.conv3b(relu(net.conv3a(x)))))
    x = relu(net.conv4b(relu(net.conv4a(x))))
    score = net.convDb(relu(net.convDa(x))).sigmoid()
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # border cells are zeroed
    torch.testing.assert_close(out.score[inner], score[inner])


def test_factorised_heads_are_three_convs_through_the_rank():
    net = KeyPointNet(width=0.5, do_upsample=False, head_rank=24).eval()
    for name in ("convDa", "convPa", "convFa"):
        first, core, last = getattr(net, name)
        assert (first.in_channels, first.out_channels, first.kernel_size) == (128, 24, (1, 1))
        assert (core.in_channels, core.out_channels, core.kernel_size) == (24, 24, (3, 3))
        assert (last.in_channels, last.out_channels, last.bias is not None) == (24, 128, True)
    assert net(torch.rand(2, 3, 32, 40)).desc.shape == (2, 256, 4, 5)


def test_the_strided_second_block_is_a_stride_2_conv_then_conv2b_without_a_pool():
    torch.manual_seed(0)
    net = randomised_batchnorm(KeyPointNet(width=0.5, do_upsample=False, stem="strided", block2="strided"))
    assert net.conv2a[0].kernel_size == (4, 4) and net.conv2a[0].stride == (2, 2)
    image = torch.rand(1, 3, 64, 96)
    out = net(image)
    assert out.score.shape == (1, 1, 8, 12)
    relu = net.relu
    x = relu(net.conv1b(relu(net.conv1a((image - 0.5) * 0.225))))
    x = relu(net.conv2b(relu(net.conv2a(x))))
    assert x.shape[-2:] == (16, 24)
    x = net.pool(relu(net.conv3b(relu(net.conv3a(x)))))
    x = relu(net.conv4b(relu(net.conv4a(x))))
    score = net.convDb(relu(net.convDa(x))).sigmoid()
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(out.score[inner], score[inner])


def test_a_factorised_backbone_runs_each_deep_conv_through_its_share_of_the_channels():
    net = KeyPointNet(width=0.5, do_upsample=False, backbone_rank=0.5).eval()
    shapes = {  # (in, rank in, rank out, out) at width 0.5: blocks 3 and 4 have 64 and 128 channels
        "conv3a": (32, 16, 32, 64), "conv3b": (64, 32, 32, 64),
        "conv4a": (64, 32, 64, 128), "conv4b": (128, 64, 64, 128),
    }
    for name, (c_in, r_in, r_out, c_out) in shapes.items():
        first, core, last, norm = getattr(net, name)
        assert (first.in_channels, first.out_channels, first.kernel_size) == (c_in, r_in, (1, 1))
        assert (core.in_channels, core.out_channels, core.kernel_size) == (r_in, r_out, (3, 3))
        assert (last.in_channels, last.out_channels, last.bias) == (r_out, c_out, None)
        assert norm.num_features == c_out
    assert net.conv2b[0].kernel_size == (3, 3)  # block 2 stays as it was
    assert net(torch.rand(1, 3, 32, 40)).desc.shape == (1, 256, 4, 5)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"stem": "pooled"}, "model.stem must be one of full, strided"),
        ({"head_rank": -1}, r"model.head_rank must be in \[0, 512\]"),
        ({"head_rank": 2.5}, "model.head_rank: expected an integer"),
        ({"block2": "full"}, "model.block2 must be one of pooled, strided"),
        ({"backbone_rank": 1.5}, r"model.backbone_rank must be in \[0.0, 1.0\]"),
        ({"pooling": "blur"}, "model.pooling must be one of max, maxblur"),
    ],
)
def test_bad_layouts_are_config_errors(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model})


def test_the_layout_round_trips_through_a_checkpoint(tmp_path):
    config = load_config("litefast")
    assert (config.model.stem, config.model.head_rank) == ("strided", 48)
    torch.manual_seed(0)
    net = build_keypoint_net(config.model).eval()
    save_checkpoint(tmp_path / "a.ckpt", config, net)
    loaded = keypoint_net_from(load_checkpoint(tmp_path / "a.ckpt"), tmp_path / "a.ckpt").eval()
    assert (loaded.stem, loaded.head_rank) == ("strided", 48)
    image = torch.rand(1, 3, 48, 64)
    torch.testing.assert_close(loaded(image).score, net(image).score)


@pytest.mark.parametrize(
    ("field", "value"),
    [("stem", "strided"), ("head_rank", 16), ("block2", "strided"), ("backbone_rank", 0.5),
     ("pooling", "maxblur")],
)
def test_a_config_that_names_another_layout_is_not_saved(tmp_path, field, value):
    config = load_config("lite")
    net = build_keypoint_net(ModelConfig(**{**config.model.__dict__, field: value}))
    with pytest.raises(ConfigError, match=f"model.{field}="):
        save_checkpoint(tmp_path / "a.ckpt", config, net)
    assert not (tmp_path / "a.ckpt").exists()


def test_tucker_factors_at_full_rank_give_the_weight_back(factorise):
    weight = torch.randn(12, 10, 3, 3, dtype=torch.float64)
    out_basis, core, in_basis = factorise.tucker_factors(weight, 12)
    rebuilt = torch.einsum("or,rskl,si->oikl", out_basis, core, in_basis)
    torch.testing.assert_close(rebuilt, weight)
    errors = []
    for rank in (2, 5, 8):
        out_basis, core, in_basis = factorise.tucker_factors(weight, rank)
        assert out_basis.shape == (12, rank) and core.shape == (rank, rank, 3, 3)
        assert in_basis.shape == (rank, 10)
        errors.append((torch.einsum("or,rskl,si->oikl", out_basis, core, in_basis) - weight).norm())
    assert errors[0] > errors[1] > errors[2] > 0


def test_factorising_at_full_rank_keeps_the_network(factorise):
    torch.manual_seed(0)
    source = randomised_batchnorm(KeyPointNet(width=0.25, do_upsample=False))
    channels = source.convDa[0].out_channels
    torch.manual_seed(1)
    target = KeyPointNet(width=0.25, do_upsample=False, head_rank=channels).eval()
    assert factorise.factorise(source, target) == []
    image = torch.rand(1, 3, 48, 64)
    expected, got = source(image), target.eval()(image)
    for name in ("score", "coord", "desc"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-4, rtol=1e-4)


def test_factorising_leaves_a_new_stem_random_and_copies_the_rest(factorise):
    torch.manual_seed(0)
    source = randomised_batchnorm(KeyPointNet(width=0.25, do_upsample=False))
    torch.manual_seed(1)
    target = KeyPointNet(width=0.25, do_upsample=False, stem="strided", head_rank=8).eval()
    before = target.conv1a[0].weight.clone()
    assert factorise.factorise(source, target) == ["conv1a", "conv1b"]
    assert torch.equal(target.conv1a[0].weight, before)
    assert torch.equal(target.conv3b[0].weight, source.conv3b[0].weight)
    assert torch.equal(target.convFaa[0].weight, source.convFaa[0].weight)
    # a rank-8 head is close to the folded source head on the same features (the leading directions)
    x = torch.randn(1, source.conv4b[0].out_channels, 6, 7)
    source_head = fold_conv_bn(*source.convDa)(x)
    error = (target.convDa(x) - source_head).norm() / source_head.norm()
    assert error < 1


def test_a_strided_second_block_starts_as_the_source_conv2a_at_every_other_pixel(factorise):
    torch.manual_seed(0)
    source = randomised_batchnorm(KeyPointNet(width=0.25, do_upsample=False))
    target = KeyPointNet(width=0.25, do_upsample=False, block2="strided").eval()
    assert factorise.factorise(source, target) == []
    x = torch.randn(1, source.conv2a[0].in_channels, 10, 14)
    torch.testing.assert_close(target.conv2a(x), source.conv2a(x)[..., ::2, ::2])
    assert torch.equal(target.conv2b[0].weight, source.conv2b[0].weight)


def test_a_backbone_factorised_at_full_rank_keeps_the_network(factorise):
    torch.manual_seed(0)
    source = randomised_batchnorm(KeyPointNet(width=0.25, do_upsample=False, head_rank=8))
    torch.manual_seed(1)
    target = KeyPointNet(width=0.25, do_upsample=False, head_rank=8, backbone_rank=1.0).eval()
    assert factorise.factorise(source, target) == []
    assert torch.equal(target.convDa[1].weight, source.convDa[1].weight)  # same heads: copied
    image = torch.rand(1, 3, 48, 64)
    expected, got = source(image), target.eval()(image)
    for name in ("score", "coord", "desc"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ({"block2": "strided"}, {}, "the source has block2 strided and the target pooled"),
        ({"backbone_rank": 0.5}, {"backbone_rank": 0.25}, "the source has backbone_rank 0.5"),
        ({"head_rank": 16}, {"head_rank": 8}, "the source has head_rank 16 and the target 8"),
    ],
)
def test_factorising_refuses_a_source_cheaper_than_the_target(factorise, source, target, message):
    with pytest.raises(Kp2dError, match=message):
        factorise.factorise(KeyPointNet(width=0.25, do_upsample=False, **source),
                            KeyPointNet(width=0.25, do_upsample=False, **target))


def test_factorise_script_writes_a_loadable_start(factorise, tmp_path, capsys):
    out = tmp_path / "init.pt"
    assert factorise.main(["lite", "litefast", "--out", str(out)]) == 0
    assert "random: conv1a, conv1b" in capsys.readouterr().out
    net = keypoint_net_from(load_checkpoint(out), out)
    assert (net.stem, net.head_rank) == ("strided", 48)


def test_factorise_script_refuses_another_width(factorise, tmp_path, capsys):
    assert factorise.main(["v4", "litefast", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "same width needed" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("name", ["torch-fused", "torch-bf16"])
@pytest.mark.parametrize(
    "layout", [{}, {"block2": "strided", "backbone_rank": 0.5}, {"block2": "strided", "pooling": "maxblur"}]
)
def test_fast_backends_run_the_cheaper_layout(name, layout):
    torch.manual_seed(0)
    net = randomised_batchnorm(
        KeyPointNet(width=0.5, do_upsample=False, stem="strided", head_rank=16, **layout)
    )
    image = torch.rand(1, 3, 64, 96)
    expected = net.describe(image)
    got = build_torch_backend(name, net)(image)
    tolerance = 1e-4 if name == "torch-fused" else 0.05
    torch.testing.assert_close(got.score, expected.score, atol=tolerance, rtol=0)
    torch.testing.assert_close(got.coord, expected.coord, atol=tolerance * 10, rtol=0)


def test_narrowing_refuses_the_cheaper_layout(tmp_path, capsys):
    narrow = script_module("narrow_weights")
    assert narrow.main(["v4", "litefast", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: litefast has a strided stem or block") and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()
