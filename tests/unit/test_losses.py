import math

import pytest
import torch

from kp2d.config import LossConfig
from kp2d.errors import ConfigError
from kp2d.features.dense import KeyPointNetOutput, sample_descriptors
from kp2d.losses import (
    SCORE_MSE_FACTOR,
    TRIPLET_FACTOR,
    _sample_unit_descriptors,
    descriptor_loss,
    keypoint_net_losses,
    location_loss,
    nearest_target,
    warp_source_keypoints,
)
from kp2d.models import IONet, KeyPointNet


def _grid_output(coord: torch.Tensor, desc: torch.Tensor | None = None, score=None) -> KeyPointNetOutput:
    batch, _, rows, cols = coord.shape
    score = torch.full((batch, 1, rows, cols), 0.5) if score is None else score
    desc = torch.randn(batch, 8, rows, cols) if desc is None else desc
    return KeyPointNetOutput(score, coord, desc)


def _cell_centers(rows, cols):
    ys, xs = torch.meshgrid(torch.arange(rows) * 8 + 3.5, torch.arange(cols) * 8 + 3.5, indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0).float()


def test_identity_homography_hand_computed():
    """Identity warp, target keypoints shifted by (1, 0) px: every distance is 1, location loss 1."""
    rows, cols = 6, 8
    height, width = rows * 8, cols * 8
    source = _cell_centers(rows, cols)
    target = source + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    warped = warp_source_keypoints(source, torch.eye(3).unsqueeze(0), height, width)
    # border cells are invalid; interior cells land inside the image
    assert warped.valid.view(rows, cols)[1:-1, 1:-1].all()
    assert not warped.valid.view(rows, cols)[0].any() and not warped.valid.view(rows, cols)[:, -1].any()
    torch.testing.assert_close(warped.warped, source.flatten(2).transpose(1, 2))
    nearest = nearest_target(warped, target, threshold=4.0)
    assert location_loss(nearest).item() == pytest.approx(1.0)
    far = nearest_target(warped, source + 4, threshold=4.0)  # every distance is 4 * sqrt(2)
    assert not far.close.any()  # nothing within 4 px: no cell contributes


def test_translation_homography_warps_points():
    """A normalised translation by (0.5, 0) moves pixels by 0.5 * (W - 1) / 2."""
    height, width = 48, 64
    shift = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).unsqueeze(0)
    source = _cell_centers(6, 8)
    warped = warp_source_keypoints(source, shift, height, width)
    expected = source.flatten(2).transpose(1, 2) + torch.tensor([0.5 * (width - 1) / 2, 0.0])
    torch.testing.assert_close(warped.warped, expected)
    inside = expected[..., 0] < width - 1
    assert (warped.valid <= inside).all()


def test_descriptor_loss_perfect_descriptors():
    """Unique, identical descriptors on both sides: recall 1 and loss = max(0, margin - d_neg) = 0."""
    rows, cols = 8, 10
    coord = _cell_centers(rows, cols)
    one_hot = torch.eye(rows * cols).T.reshape(1, rows * cols, rows, cols)  # orthogonal: distance sqrt(2)
    warped = warp_source_keypoints(coord, torch.eye(3).unsqueeze(0), rows * 8, cols * 8)
    # sample the dense maps exactly at cell centres: use descriptor maps at cell resolution covering the image
    loss, recall = descriptor_loss(one_hot, one_hot, warped, LossConfig(min_valid_cells=1))
    assert recall.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def _one_cell_right(rows, cols):
    """Cell centres, one-hot descriptors per cell, and the normalised homography moving 8 px to the right."""
    coord = _cell_centers(rows, cols)
    one_hot = torch.eye(rows * cols).T.reshape(1, rows * cols, rows, cols)
    shift = torch.eye(3)
    shift[0, 2] = 2 * 8 / (cols * 8 - 1)  # normalised as normalize_points: 8 px over (W - 1) / 2
    return coord, one_hot, shift.unsqueeze(0)


def test_centred_reading_reads_each_cell_at_its_centre():
    """At a cell's centre pixel the centred reading is that cell's descriptor, as inference reads it."""
    rows, cols = 6, 8
    coord, one_hot, _ = _one_cell_right(rows, cols)
    warped = warp_source_keypoints(coord, torch.eye(3).unsqueeze(0), rows * 8, cols * 8)
    centred = _sample_unit_descriptors(one_hot, warped.source_norm, "centred", (rows * 8, cols * 8))
    torch.testing.assert_close(centred[0], torch.eye(rows * cols))
    inference = sample_descriptors(one_hot, coord, rows * 8, cols * 8, "centred").flatten(2).transpose(1, 2)
    torch.testing.assert_close(centred, inference)
    original = _sample_unit_descriptors(one_hot, warped.source_norm)  # the map shrunk about the centre
    assert (original[0].diagonal() < 0.99).sum() > rows * cols // 2
    with pytest.raises(ValueError, match="needs the input"):
        _sample_unit_descriptors(one_hot, warped.source_norm, "centred")


def test_a_whole_cell_shift_matches_exactly_only_read_centred():
    """The target is the source moved one cell right: read centred, each anchor equals its positive.

    With one-hot descriptors the hardest negative is at sqrt(2), so a margin of 1.5 costs each anchor
    ``d_pos - sqrt(2) + 1.5``: exactly ``1.5 - sqrt(2)`` read centred, more read the original way, whose
    shrink about the centre blends different cells at the two positions.
    """
    rows, cols = 8, 10
    coord, one_hot, shift = _one_cell_right(rows, cols)
    moved = torch.roll(one_hot, shifts=1, dims=3)  # target cell (i, j + 1) holds source cell (i, j)
    warped = warp_source_keypoints(coord, shift, rows * 8, cols * 8)
    losses = {}
    for sampling in ("original", "centred"):
        reading = (sampling, (rows * 8, cols * 8))
        anchors = _sample_unit_descriptors(one_hot, warped.source_norm, *reading)
        positives = _sample_unit_descriptors(moved, warped.warped_norm, *reading)
        cosine = (anchors * positives).sum(-1)[warped.valid]
        config = LossConfig(min_valid_cells=1, triplet_margin=1.5, descriptor_sampling=sampling)
        losses[sampling], recall = descriptor_loss(one_hot, moved, warped, config, shape_hw=reading[1])
        assert recall.item() == pytest.approx(1.0)
        if sampling == "centred":
            torch.testing.assert_close(cosine, torch.ones_like(cosine))
        else:  # about 0.7 px apart at this size: a tenth of a cell
            assert (cosine < 0.999).all()
    assert losses["centred"].item() == pytest.approx(1.5 - math.sqrt(2), abs=1e-5)
    assert losses["original"].item() > losses["centred"].item() + 0.1


def test_loss_descriptor_sampling_is_checked():
    with pytest.raises(ConfigError, match="loss.descriptor_sampling must be one of original, centred"):
        LossConfig(descriptor_sampling="center")


def test_descriptor_loss_skips_images_with_few_valid_cells():
    coord = _cell_centers(4, 4)  # only 4 interior cells < 20
    warped = warp_source_keypoints(coord, torch.eye(3).unsqueeze(0), 32, 32)
    desc = torch.randn(1, 8, 4, 4)
    loss, recall = descriptor_loss(desc, desc, warped, LossConfig())
    assert loss.item() == 0 and recall.item() == 0


def test_descriptor_loss_margin_hand_computed():
    """All descriptors equal: d_pos = d_neg = 0, so each anchor costs exactly the margin."""
    rows, cols = 8, 10
    coord = _cell_centers(rows, cols)
    warped = warp_source_keypoints(coord, torch.eye(3).unsqueeze(0), rows * 8, cols * 8)
    desc = torch.ones(1, 4, rows, cols)
    loss, _ = descriptor_loss(desc, desc, warped, LossConfig(min_valid_cells=1, triplet_margin=0.2))
    assert loss.item() == pytest.approx(0.2, abs=1e-5)


def test_losses_are_finite_for_random_network():
    torch.manual_seed(0)
    net = KeyPointNet(with_dropout=False).train()
    images = torch.rand(2, 3, 64, 96)
    theta = math.radians(5)
    rotation = torch.tensor(
        [[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0], [0.0, 0.0, 1.0]]
    )
    terms = keypoint_net_losses(
        net(images), net(images), rotation.expand(2, 3, 3), (64, 96), LossConfig(io_top_k=20), IONet()
    )
    assert all(torch.isfinite(t).all() for t in terms)


def test_the_centred_reading_reaches_the_descriptor_and_io_terms_with_gradients():
    """Read centred, the triplet and IO terms change (the other terms do not) and train the keypoints too."""
    torch.manual_seed(0)
    net, io_net = KeyPointNet(with_dropout=False).train(), IONet()
    images = torch.rand(2, 3, 64, 96)
    theta = math.radians(5)
    rotation = torch.tensor(
        [[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0], [0.0, 0.0, 1.0]]
    ).expand(2, 3, 3)
    source, target = net(images), net(images)
    terms = {
        sampling: keypoint_net_losses(
            source, target, rotation, (64, 96),
            LossConfig(io_top_k=20, io_min_inliers=0, descriptor_sampling=sampling), io_net,
        )
        for sampling in ("original", "centred")
    }
    original, centred = terms["original"], terms["centred"]
    assert centred.descriptor != original.descriptor and centred.io != original.io
    for name in ("location", "score_usp", "score_mse"):
        assert getattr(centred, name) == getattr(original, name)
    coord_gradient = torch.autograd.grad(centred.io, source.coord, retain_graph=True)[0]
    assert torch.isfinite(coord_gradient).all() and coord_gradient.abs().sum() > 0


def test_total_is_the_weighted_sum_with_the_named_factors():
    """The original's ×2 on the triplet and score-MSE terms are the named factors, nothing hidden beside."""
    assert (TRIPLET_FACTOR, SCORE_MSE_FACTOR) == (2.0, 2.0)
    torch.manual_seed(0)
    net = KeyPointNet(with_dropout=False).train()
    images = torch.rand(2, 3, 64, 96)
    config = LossConfig(
        io_top_k=20, keypoint_loss_weight=0.5, descriptor_loss_weight=3.0, score_loss_weight=7.0
    )
    identity = torch.eye(3).expand(2, 3, 3)
    terms = keypoint_net_losses(net(images), net(images), identity, (64, 96), config, IONet())
    expected = (
        0.5 * (terms.location + terms.io)
        + 3.0 * TRIPLET_FACTOR * terms.descriptor
        + 7.0 * (terms.score_usp + SCORE_MSE_FACTOR * terms.score_mse)
    )
    torch.testing.assert_close(terms.total, expected)


def test_chebyshev_neighbours_same_on_every_device_path():
    """The GPU path (broadcasting) gives cdist(p=inf)'s answer, ties at the radius included."""
    from kp2d.losses import _within_chebyshev, _within_chebyshev_broadcast

    points = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [4.0, 4.5], [-3.9, 3.9], [100.0, 2.0]]])
    rows = [[1, 1, 0, 1, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    expected = torch.tensor(rows, dtype=torch.bool)
    assert torch.equal(_within_chebyshev(points, 4.0)[0], expected)
    assert torch.equal(_within_chebyshev_broadcast(points, 4.0)[0], expected)
    random = torch.rand(3, 400, 2, generator=torch.Generator().manual_seed(0)) * 60
    assert torch.equal(_within_chebyshev(random, 4.0), _within_chebyshev_broadcast(random, 4.0))


def test_masked_means_equal_boolean_indexing_values_and_gradients():
    """Location and score losses avoid boolean indexing (a GPU sync); numbers and gradients are unchanged."""
    from kp2d.losses import NearestTarget, WarpedKeypoints, score_loss

    generator = torch.Generator().manual_seed(3)
    batch, rows, cols = 2, 6, 8
    cells = rows * cols
    distance = (torch.rand(batch, cells, generator=generator) * 5).requires_grad_()
    valid = torch.rand(batch, cells, generator=generator) > 0.2
    close = valid & (distance.detach() < 4)
    index = torch.randint(0, cells, (batch, cells), generator=generator)
    source_score = torch.rand(batch, 1, rows, cols, generator=generator).requires_grad_()
    target_score = torch.rand(batch, 1, rows, cols, generator=generator).requires_grad_()
    warped_norm = torch.rand(batch, cells, 2, generator=generator) * 2 - 1
    warped = WarpedKeypoints(warped_norm, warped_norm, warped_norm, valid)
    nearest = NearestTarget(distance, index, close)

    def reference():
        source = source_score.flatten(1)
        target = torch.gather(target_score.flatten(1), 1, index)
        d = distance[close]
        usp = ((target[close] + source[close]) * (d - d.mean())).mean()
        resampled = torch.nn.functional.grid_sample(
            target_score, warped_norm.unsqueeze(1), mode="bilinear", align_corners=True
        ).flatten(1)
        mse = torch.nn.functional.mse_loss(resampled[valid], source[valid])
        return distance[close].mean(), usp, mse

    inputs = (distance, source_score, target_score)
    ours_all = (location_loss(nearest), *score_loss(source_score, target_score, warped, nearest))
    for ours, expected in zip(ours_all, reference(), strict=True):
        torch.testing.assert_close(ours, expected)
        ours_grad = torch.autograd.grad(ours, inputs, allow_unused=True)
        expected_grad = torch.autograd.grad(expected, inputs, allow_unused=True)
        for got, want in zip(ours_grad, expected_grad, strict=True):
            if want is None:
                assert got is None or not got.any()
            else:
                torch.testing.assert_close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("min_inliers, used", [(0, True), (10**6, False)])
def test_io_loss_is_zero_below_the_inlier_count(min_inliers, used):
    from kp2d.losses import io_loss

    torch.manual_seed(0)
    net, io_net = KeyPointNet(with_dropout=False).train(), IONet()
    images = torch.rand(2, 3, 64, 96)
    source, target = net(images), net(images)
    warped = warp_source_keypoints(source.coord, torch.eye(3).expand(2, 3, 3), 64, 96)
    config = LossConfig(io_top_k=20, io_min_inliers=min_inliers)
    loss, inliers = io_loss(source, target, warped, io_net, config, 64, 96)
    assert inliers > 0
    assert (loss > 0) == used
    gradient = torch.autograd.grad(loss, next(io_net.parameters()))[0]
    assert gradient.abs().sum() > 0 if used else not gradient.any()


def test_descriptor_loss_finite_when_an_invalid_point_lies_outside_the_image():
    """A point warped far outside samples an all-zero descriptor; it is invalid and must not make NaNs."""
    from kp2d.losses import WarpedKeypoints

    generator = torch.Generator().manual_seed(0)
    source_desc = torch.randn(1, 8, 6, 8, generator=generator).requires_grad_()
    target_desc = torch.randn(1, 8, 6, 8, generator=generator).requires_grad_()
    points = torch.rand(1, 40, 2, generator=generator) * 1.6 - 0.8
    warped_norm = points.clone()
    warped_norm[0, 0] = torch.tensor([5.0, 5.0])  # far outside: grid_sample gives zeros there
    valid = torch.ones(1, 40, dtype=torch.bool)
    valid[0, 0] = False
    warped = WarpedKeypoints(points, warped_norm, warped_norm * 100, valid)
    loss, recall = descriptor_loss(source_desc, target_desc, warped, LossConfig(min_valid_cells=1))
    assert torch.isfinite(loss) and torch.isfinite(recall)
    loss.backward()
    assert torch.isfinite(source_desc.grad).all() and torch.isfinite(target_desc.grad).all()


def test_nearest_target_is_the_exact_nearest_on_a_cpu():
    """The original takes the norm of the coordinates' differences; the matrix-product form of ``cdist``
    (``|a|^2 + |b|^2 - 2ab`` in float32, used before on CPUs) picked another cell for about 1 point in 10,000
    at image-sized coordinates (here 1 of 9,600)."""
    from kp2d.losses import WarpedKeypoints

    generator = torch.Generator().manual_seed(0)
    warped = torch.rand(8, 1200, 2, generator=generator) * 320
    target = torch.rand(8, 1200, 2, generator=generator) * 320
    keypoints = WarpedKeypoints(warped, warped, warped, torch.ones(8, 1200, dtype=torch.bool))
    nearest = nearest_target(keypoints, target.transpose(1, 2).reshape(8, 2, 30, 40), threshold=4.0)
    exact = (warped.double()[:, :, None] - target.double()[:, None]).norm(dim=-1).argmin(dim=2)
    assert torch.equal(nearest.index, exact)
    rounded = torch.cdist(warped, target, compute_mode="use_mm_for_euclid_dist").argmin(dim=2)
    assert 0 < int((rounded != exact).sum()) < 10
