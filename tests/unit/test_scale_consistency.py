"""``loss.scale_consistency_weight``: keypoints that keep their place when the input's scale changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kp2d.config import LossConfig
from kp2d.errors import ConfigError
from kp2d.features.dense import CELL, CellOutput
from kp2d.losses import scale_consistency_loss
from network_helpers import lite_distillation


def _cells(rows: int, cols: int, offset: float) -> torch.Tensor:
    """``(1, 2, rows, cols)`` keypoints ``offset`` px into each cell (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([xs * CELL + offset, ys * CELL + offset]).float()[None]


def approx_zero():
    return pytest.approx(0, abs=1e-6)


def _case():
    """A 64x64 image (8x8 cells at their centres) and its half-size copy (4x4 cells) whose keypoints
    (1.5 + 8 j) map back (``2 x' + 0.5``) onto the image's keypoints of every other cell (3.5 + 16 j)."""
    base = CellOutput(torch.ones(1, 1, 8, 8), _cells(8, 8, 3.5), None)
    coarse = CellOutput(torch.ones(1, 1, 4, 4), _cells(4, 4, 1.5), None)
    return base, coarse


def test_keypoints_that_move_with_the_content_cost_nothing():
    base, coarse = _case()
    assert scale_consistency_loss(base, coarse, threshold=4.0).item() == approx_zero()


def test_each_axis_maps_back_by_its_own_ratio():
    base, _ = _case()
    # a 32-wide, 48-high copy of the 64x64 image: x = 2 x' + 0.5, y = (y' + 0.5) / 0.75 - 0.5; the image's
    # centres 3.5 + 8 i come from x' = 1.5 + 4 i and y' = 2.5 + 6 i, one of each in every copy cell below
    ys = torch.tensor([2.5, 8.5, 20.5, 26.5, 32.5, 44.5])  # i = 0, 1, 3, 4, 5, 7: copy rows 0-5
    xs = torch.tensor([1.5, 9.5, 17.5, 25.5])  # i = 0, 2, 4, 6: copy columns 0-3
    coord = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]  # (1, 2, 6, 4)
    coarse = CellOutput(torch.ones(1, 1, 6, 4), coord, None)
    assert scale_consistency_loss(base, coarse, threshold=4.0).item() == approx_zero()
    # the same first four rows in a 32x32 copy map back by 0.5 on both axes: they land off the image's
    square = CellOutput(torch.ones(1, 1, 4, 4), coord[..., :4, :], None)
    assert scale_consistency_loss(base, square, threshold=4.0).item() > 0.1


def test_the_loss_by_hand():
    base, coarse = _case()
    coord = coarse.coord.clone()
    # the interior copy cells are rows and columns 1-2: 4 keypoints count; one moved (0.3, 0.4) copy px lands
    # (0.6, 0.8) = 1 px of the image off its partner, 0.5 px of the copy
    coord[0, :, 1, 2] += torch.tensor([0.3, 0.4])
    coarse = coarse._replace(coord=coord.requires_grad_())
    loss = scale_consistency_loss(base, coarse, threshold=4.0)
    assert loss.item() == pytest.approx(0.5 / 4, abs=1e-6)
    loss.backward()
    assert coarse.coord.grad.abs().sum() > 0
    # the copy's scores weigh each pair: the moved keypoint at 3 against 3 others at 1
    score = torch.ones(1, 1, 4, 4)
    score[0, 0, 1, 2] = 3.0
    weighted = scale_consistency_loss(base, coarse._replace(score=score), threshold=4.0)
    assert weighted.item() == pytest.approx(3 * 0.5 / 6, abs=1e-6)
    # beyond the threshold (in the copy's pixels) a pair does not count
    assert scale_consistency_loss(base, coarse, threshold=0.4).item() == approx_zero()


def test_siamese_loss_adds_the_weighted_term_on_a_copy_cut_to_whole_cells():
    loss, student, _ = lite_distillation(scale_consistency_weight=0.5)
    source = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    terms = loss(source, source, torch.eye(3).expand(2, 3, 3))
    torch.manual_seed(1)
    reduced = loss._reduce(source)
    height, width = reduced.shape[-2:]
    assert height % CELL == 0 and width % CELL == 0 and 32 <= height <= 56
    resized = F.interpolate(source, size=(height, width), mode="bilinear", antialias=True)
    torch.testing.assert_close(reduced, resized)
    expected = scale_consistency_loss(student(source), student.forward_cells(reduced), 4.0)
    assert expected.item() > 0
    assert terms.scale_consistency.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    total = terms.distill.item() + terms.scale_consistency.item()
    assert terms.total.item() == pytest.approx(total, rel=1e-5)
    loss.loss_config.scale_consistency_weight = 0.0
    assert loss(source, source, torch.eye(3)[None]).scale_consistency == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scale_consistency_weight": -1.0}, "scale_consistency_weight"),
        ({"scale_consistency_factors": (0.9, 0.5)}, "scale_consistency_factors"),
        ({"scale_consistency_factors": (0.5, 1.0)}, "scale_consistency_factors"),
        ({"scale_consistency_factors": (0.0, 0.5)}, "scale_consistency_factors"),
    ],
)
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**fields)
