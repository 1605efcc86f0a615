"""``loss.shift_consistency_weight``: keypoints that keep their place when the cell grid's phase moves."""

from __future__ import annotations

import pytest
import torch

from kp2d.config import LossConfig
from kp2d.errors import ConfigError
from kp2d.features.dense import CELL, CellOutput
from kp2d.losses import shift_consistency_loss
from kp2d.train.step import SiameseLoss
from network_helpers import lite_distillation


def _cells(rows: int, cols: int) -> torch.Tensor:
    """``(1, 2, rows, cols)`` keypoints at the cell centres (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([xs * CELL + 3.5, ys * CELL + 3.5]).float()[None]


def _case(shift=(3, 5)):
    """A 64x64 image (8x8 cells) and its keypoints moved into the copy cut ``shift`` px in, ``(2, 64)``."""
    base = CellOutput(torch.ones(1, 1, 8, 8), _cells(8, 8), torch.zeros(1, 1, 8, 8))
    return base, base.coord[0].flatten(1) - torch.tensor([[shift[0]], [shift[1]]], dtype=torch.float32)


def test_keypoints_that_move_with_the_content_cost_nothing():
    base, copy = _case()
    # the 56x56 copy has 7x7 cells: give them the base keypoints of rows and columns 1-7
    shifted = CellOutput(None, copy.view(2, 8, 8)[:, 1:, 1:].reshape(1, 2, 7, 7), None)
    assert shift_consistency_loss(base, shifted, (3, 5), threshold=4.0).item() == pytest.approx(0, abs=1e-5)


def test_the_loss_by_hand():
    base, copy = _case()
    shifted_coord = copy.view(2, 8, 8)[:, 1:, 1:].clone()
    # which base keypoints count: interior cells (1..6) a cell inside the copy, x in [11, 50], y in [13, 52]:
    # x centres 11.5 ... 43.5 (cells 1-5) and y centres 19.5 ... 51.5 (cells 2-6), 25 keypoints
    shifted_coord[:, 2 - 1, 3 - 1] += torch.tensor([0.3, 0.4])  # base cell (row 2, col 3) now 0.5 px off
    shifted = CellOutput(None, shifted_coord[None].requires_grad_(), None)
    loss = shift_consistency_loss(base, shifted, (3, 5), threshold=4.0)
    assert loss.item() == pytest.approx(0.5 / 25, abs=1e-6)
    loss.backward()
    assert shifted.coord.grad.abs().sum() > 0
    # the base scores weigh each pair: the moved keypoint at 3 against 24 others at 1
    score = torch.ones(1, 1, 8, 8)
    score[0, 0, 2, 3] = 3.0
    weighted = shift_consistency_loss(base._replace(score=score), shifted, (3, 5), threshold=4.0)
    assert weighted.item() == pytest.approx(3 * 0.5 / 27, abs=1e-6)
    # beyond the threshold a pair does not count (its nearest keypoint is then 0.5 px away, ignored too)
    assert shift_consistency_loss(base, shifted, (3, 5), threshold=0.4).item() == pytest.approx(0, abs=1e-6)


def test_siamese_loss_adds_the_weighted_term():
    loss, student, _ = lite_distillation(shift_consistency_weight=0.5)
    source = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    terms = loss(source, source, torch.eye(3).expand(2, 3, 3))
    torch.manual_seed(1)
    dx, dy = SiameseLoss._draw_shift()
    assert (dx, dy) != (0, 0) and 0 <= dx < CELL and 0 <= dy < CELL
    expected = shift_consistency_loss(
        student(source), student.forward_cells(source[..., dy : dy + 56, dx : dx + 56]), (dx, dy), 4.0
    )
    assert expected.item() > 0
    assert terms.shift_consistency.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    total = terms.distill.item() + terms.shift_consistency.item()
    assert terms.total.item() == pytest.approx(total, rel=1e-5)
    loss.loss_config.shift_consistency_weight = 0.0
    plain = loss(source, source, torch.eye(3)[None])
    assert plain.shift_consistency == 0


def test_a_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="shift_consistency_weight"):
        LossConfig(shift_consistency_weight=-1.0)
