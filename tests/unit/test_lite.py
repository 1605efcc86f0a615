"""The narrower network (``model.width``), its start from wider weights, and distillation."""

from __future__ import annotations

import pytest
import torch

from kp2d.config import ModelConfig, load_config
from kp2d.errors import ConfigError
from kp2d.features.dense import KeyPointNetOutput
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.losses import distillation_loss, warped_distillation_loss, warped_location_loss
from kp2d.models.keypoint_net import KeyPointNet, build_keypoint_net, keypoint_net_from
from kp2d.train.step import SiameseLoss
from network_helpers import lite_distillation, randomised_batchnorm, script_module


def test_width_scales_every_layer_but_the_descriptor_output():
    net = KeyPointNet(width=0.5, do_upsample=False)
    assert net.conv1a[0].out_channels == 16
    assert net.conv4b[0].out_channels == 128
    assert net.convFaa[0].in_channels == 128
    assert net.convFbb.out_channels == 256
    out = net.eval()(torch.rand(1, 3, 64, 96))
    assert out.score.shape == (1, 1, 8, 12)
    assert out.desc.shape == (1, 256, 8, 12)  # no upsampling: one descriptor per cell
    wide = KeyPointNet(width=0.5)  # with upsampling the skip and the shuffled map still add up
    assert wide.eval()(torch.rand(1, 3, 64, 96)).desc.shape == (1, 256, 16, 24)


@pytest.mark.parametrize("width", [0.3, 0.75, 1.3])
@pytest.mark.parametrize("do_upsample", [True, False])
def test_any_width_builds_a_working_network(width, do_upsample):
    net = KeyPointNet(width=width, do_upsample=do_upsample).eval()
    assert all(m.out_channels % 8 == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d)
               and m.out_channels > 2)
    assert net(torch.rand(1, 3, 32, 48)).desc.shape[1] == 256


def test_width_one_is_the_papers_network():
    assert list(KeyPointNet().state_dict()) == list(KeyPointNet(width=1.0).state_dict())
    assert sum(p.numel() for p in KeyPointNet().parameters()) == sum(
        p.numel() for p in build_keypoint_net(ModelConfig()).parameters()
    )


@pytest.mark.parametrize("width", [0.0, 0.1, 3.0])
def test_width_out_of_range_is_refused(width):
    with pytest.raises(ConfigError, match="model.width"):
        ModelConfig(width=width)


def test_width_round_trips_through_a_checkpoint(tmp_path):
    config = load_config("lite")
    net = build_keypoint_net(config.model).eval()
    save_checkpoint(tmp_path / "lite.ckpt", config, net)
    checkpoint = load_checkpoint(tmp_path / "lite.ckpt")
    assert checkpoint.model.width == 0.5
    again = keypoint_net_from(checkpoint, tmp_path / "lite.ckpt").eval()
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(again(image).desc, net(image).desc)


def test_a_checkpoint_whose_config_names_another_width_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.width=0.5 but the network has width=1"):
        save_checkpoint(tmp_path / "x.ckpt", load_config("lite"), KeyPointNet(do_upsample=False))


def test_narrowing_to_the_same_width_copies_the_network():
    narrow = script_module("narrow_weights")
    wide = randomised_batchnorm(KeyPointNet())
    same = KeyPointNet().eval()
    narrow.narrow(wide, same)
    image = torch.rand(1, 3, 64, 64)
    a, b = wide(image), same(image)
    torch.testing.assert_close(a.score, b.score)  # channels kept in order: the same sums
    torch.testing.assert_close(a.coord, b.coord)


def test_narrowing_keeps_the_channels_with_the_largest_batchnorm_scale():
    narrow = script_module("narrow_weights")
    wide = randomised_batchnorm(KeyPointNet(), seed=3)
    half = KeyPointNet(width=0.5, do_upsample=False).eval()
    random_layers = narrow.narrow(wide, half)
    assert random_layers == ["convFaa", "convFbb"]
    kept = wide.conv1a[1].weight.abs().topk(16).indices.sort().values
    torch.testing.assert_close(half.conv1a[0].weight, wide.conv1a[0].weight[kept])
    kept2 = wide.conv1b[1].weight.abs().topk(16).indices.sort().values
    torch.testing.assert_close(half.conv1b[0].weight, wide.conv1b[0].weight[kept2][:, kept])
    torch.testing.assert_close(half.conv1b[1].running_var, wide.conv1b[1].running_var[kept2])


def _output(score, coord, desc) -> KeyPointNetOutput:
    return KeyPointNetOutput(torch.tensor(score), torch.tensor(coord), torch.tensor(desc))


def test_distillation_loss_is_zero_for_identical_outputs():
    torch.manual_seed(0)
    out = KeyPointNet().eval()(torch.rand(2, 3, 32, 48))
    assert distillation_loss(out, out, 32, 48).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_by_hand():
    # one 8x8 image, one cell: score 0.5 vs 0.25, keypoint 4 px off in x, orthogonal descriptors
    teacher = _output([[[[0.25]]]], [[[[3.0]], [[3.0]]]], [[[[1.0]], [[0.0]]]])
    student = _output([[[[0.5]]]], [[[[7.0]], [[3.0]]]], [[[[0.0]], [[1.0]]]])
    # |0.5 - 0.25| + 4 / 8 + (1 - cos 90 degrees)
    assert distillation_loss(student, teacher, 8, 8).item() == pytest.approx(0.25 + 0.5 + 1.0)
    # each term weighted on its own: score x2, location x0, descriptor x0.5
    weighted = distillation_loss(student, teacher, 8, 8, (2.0, 0.0, 0.5)).item()
    assert weighted == pytest.approx(2 * 0.25 + 0.5 * 1.0)


def test_distillation_alone_skips_the_target_and_trains_towards_the_teacher():
    torch.manual_seed(0)
    config = load_config("lite")
    student = build_keypoint_net(config.model)
    teacher = KeyPointNet(width=0.5, do_upsample=False).eval()
    loss = SiameseLoss(student, None, config, teacher=teacher)
    assert not loss._self_supervised()
    assert not any(p is q for p in loss.parameters() for q in teacher.parameters())  # not trained or saved
    source = torch.rand(2, 3, 64, 64)
    calls = []
    student.register_forward_hook(lambda *_: calls.append(1))
    terms = loss(source, torch.full_like(source, float("nan")), torch.eye(3).expand(2, 3, 3))
    assert len(calls) == 1  # the target (here NaN) never went through the network
    assert terms.total.item() == pytest.approx(terms.distill.item()) and terms.distill.item() > 0
    terms.total.backward()
    assert student.convFbb.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def _constant_output(score: float, desc: list[float], cells: int = 3) -> KeyPointNetOutput:
    """One image of ``cells x cells`` cells: a constant score and descriptor, keypoints at cell centres."""
    centres = torch.arange(cells, dtype=torch.float32) * 8 + 3.5
    coord = torch.stack(torch.meshgrid(centres, centres, indexing="xy"))[None]  # (1, 2, cells, cells)
    return KeyPointNetOutput(
        torch.full((1, 1, cells, cells), score),
        coord,
        torch.tensor(desc, dtype=torch.float32).view(1, -1, 1, 1).expand(1, len(desc), cells, cells),
    )


def test_warped_distillation_loss_by_hand():
    # 24x24 image, 3x3 cells: only the centre cell is interior; identity homography
    teacher = _constant_output(0.5, [1.0, 0.0])
    student = _constant_output(0.3, [1.0, 1.0])
    loss = warped_distillation_loss(student, teacher, torch.eye(3)[None], 24, 24)
    # |0.3 - 0.5| + (1 - cos 45 degrees)
    assert loss.item() == pytest.approx(0.2 + 1 - 2**-0.5, abs=1e-6)


def test_warped_distillation_loss_ignores_keypoints_warped_outside():
    teacher = _constant_output(0.5, [1.0, 0.0])
    student = _constant_output(0.3, [0.0, 1.0])
    shift_out = torch.tensor([[[1.0, 0.0, 1.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # x_norm + 1.5
    loss = warped_distillation_loss(student, teacher, shift_out, 24, 24)
    assert loss.item() == 0.0


def test_warped_distillation_runs_the_network_on_the_target_too():
    loss, student, teacher = lite_distillation(distill_warped_weight=0.5)
    calls = []
    student.register_forward_hook(lambda *_: calls.append(1))
    source = torch.rand(2, 3, 64, 64)
    identity = torch.eye(3).expand(2, 3, 3)
    terms = loss(source, source.flip(-1), identity)
    assert len(calls) == 2 and torch.isfinite(terms.total)
    plain = distillation_loss(student(source), teacher(source), 64, 64)
    warped = warped_distillation_loss(student(source.flip(-1)), teacher(source), identity, 64, 64)
    assert terms.distill.item() == pytest.approx(plain.item() + 0.5 * warped.item(), rel=1e-5)


def test_the_config_weights_each_distillation_term():
    loss, student, teacher = lite_distillation(
        distill_weight=2.0, distill_score_weight=3.0, distill_descriptor_weight=0.0
    )
    source = torch.rand(2, 3, 64, 64)
    terms = loss(source, source, torch.eye(3).expand(2, 3, 3))
    expected = 2.0 * distillation_loss(student(source), teacher(source), 64, 64, (3.0, 1.0, 0.0))
    assert terms.distill.item() == pytest.approx(expected.item(), rel=1e-5)


def test_warped_location_loss_by_hand():
    # 40x40 image, 5x5 cells: the 3x3 interior cells count; identity homography
    teacher = _constant_output(0.5, [1.0, 0.0], cells=5)
    teacher = teacher._replace(score=torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0)))
    coord = (teacher.coord + torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)).requires_grad_()
    student = _constant_output(0.3, [0.0, 1.0], cells=5)._replace(coord=coord)
    loss = warped_location_loss(student, teacher, torch.eye(3)[None], 40, 40, threshold=4.0)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)  # every pair 0.5 px apart, whatever the weights
    loss.backward()
    assert coord.grad[0, 0].abs().sum() > 0 and coord.grad[0, 1].abs().sum() == 0  # pulled along x only
    # the centre's student keypoint 20 px away: its teacher keypoint's nearest is 8 px off, so dropped
    moved = coord.detach().clone()
    moved[0, :, 2, 2] += 20.0
    far = warped_location_loss(student._replace(coord=moved), teacher, torch.eye(3)[None], 40, 40, 4.0)
    assert far.item() == pytest.approx(0.5, abs=1e-6)
    shift_out = torch.tensor([[[1.0, 0.0, 2.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # every keypoint outside
    assert warped_location_loss(student, teacher, shift_out, 40, 40, 4.0).item() == 0.0


def test_the_warped_location_term_runs_the_network_on_the_target_too():
    loss, student, teacher = lite_distillation(distill_warped_location_weight=0.5)
    source = torch.rand(2, 3, 64, 64)
    identity = torch.eye(3).expand(2, 3, 3)
    terms = loss(source, source.flip(-1), identity)
    plain = distillation_loss(student(source), teacher(source), 64, 64)
    located = warped_location_loss(student(source.flip(-1)), teacher(source), identity, 64, 64, 4.0)
    assert located.item() > 0
    assert terms.distill.item() == pytest.approx(plain.item() + 0.5 * located.item(), rel=1e-5)
