"""Self-supervised losses of KeyPointNet and IO-Net (SPEC §3), pure functions vectorised over the batch.

Conventions: the network ran on a *source* image and a *target* image with ``target(H(p)) = source(p)``;
``homography`` maps source-normalised to target-normalised coordinates. Cells are flattened in raster
order, ``N = Hc * Wc``. Every function returns named terms; :func:`keypoint_net_losses` composes them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kp2d.config import LossConfig
from kp2d.features.dense import (
    CELL,
    CellOutput,
    KeyPointNetOutput,
    descriptor_grid,
    interior_mask,
    read_map,
    sample_descriptors,
)
from kp2d.features.extraction import to_image_pixels
from kp2d.geometry import denormalize_points, normalize_points, warp_points
from kp2d.models.io_net import IONet

#: The original's fixed factors inside the total loss, on top of the configurable weights (kept so that
#: the weights of its configs mean what they meant there; descriptor weight 2.0 is 4 x the triplet loss).
TRIPLET_FACTOR = 2.0
SCORE_MSE_FACTOR = 2.0

__all__ = [
    "SCORE_MSE_FACTOR",
    "TRIPLET_FACTOR",
    "LossTerms",
    "WarpedKeypoints",
    "descriptor_loss",
    "distillation_loss",
    "warped_distillation_loss",
    "scale_consistency_loss",
    "shift_consistency_loss",
    "warped_location_loss",
    "io_loss",
    "keypoint_net_losses",
    "location_loss",
    "score_loss",
    "warp_source_keypoints",
]


class WarpedKeypoints(NamedTuple):
    """Source keypoints and their positions in the target, flattened over cells.

    Attributes:
        source_norm: ``(B, N, 2)`` source keypoints, normalised.
        warped_norm: ``(B, N, 2)`` their warp into the target, normalised.
        warped: ``(B, N, 2)`` the same in target pixels.
        valid: ``(B, N)`` bool: not a border cell and the warp lands inside the target.
    """

    source_norm: torch.Tensor
    warped_norm: torch.Tensor
    warped: torch.Tensor
    valid: torch.Tensor


class NearestTarget(NamedTuple):
    """For each warped source keypoint, the nearest target keypoint (over all target cells).

    Attributes:
        distance: ``(B, N)`` pixel distance (differentiable w.r.t. both keypoint sets).
        index: ``(B, N)`` index of the nearest target cell.
        close: ``(B, N)`` bool, ``valid`` and ``distance < location_threshold``.
    """

    distance: torch.Tensor
    index: torch.Tensor
    close: torch.Tensor


class LossTerms(NamedTuple):
    """Loss terms (unweighted) and their weighted sum.

    ``total = kw·(location + io) + dw·T·descriptor + sw·(score_usp + S·score_mse)`` with ``kw, dw, sw``
    the keypoint, descriptor and score loss weights and ``T``, ``S`` the original's fixed factors
    :data:`TRIPLET_FACTOR`, :data:`SCORE_MSE_FACTOR`; disabled terms are 0. ``recall`` is the fraction of
    anchors whose nearest descriptor is the positive (for logs); ``io_inliers`` counts the correspondences
    given to IO-Net that are true matches (its +1 labels).
    """

    total: torch.Tensor
    location: torch.Tensor
    descriptor: torch.Tensor
    score_usp: torch.Tensor
    score_mse: torch.Tensor
    io: torch.Tensor
    recall: torch.Tensor
    io_inliers: torch.Tensor
    distill: torch.Tensor  # the weighted distillation terms (0 without a teacher); included in ``total``
    shift_consistency: torch.Tensor  # the weighted shift-consistency term (0 unless set); in ``total``
    scale_consistency: torch.Tensor  # the weighted scale-consistency term (0 unless set); in ``total``


def _flatten_cells(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, C, Hc, Wc)`` → ``(B, Hc*Wc, C)``."""
    return tensor.flatten(2).transpose(1, 2)


def warp_source_keypoints(
    source_coord: torch.Tensor, homography: torch.Tensor, height: int, width: int
) -> WarpedKeypoints:
    """Warp source keypoints ``(B, 2, Hc, Wc)`` (pixels) into the target with ``(B, 3, 3)`` homographies."""
    _, _, rows, cols = source_coord.shape
    source_norm = normalize_points(_flatten_cells(source_coord), height, width)
    warped_norm = warp_points(source_norm, homography.to(source_norm.dtype))
    warped = denormalize_points(warped_norm, height, width)
    inside = (warped_norm.abs() < 1).all(dim=-1)
    valid = inside & interior_mask(rows, cols, device=source_coord.device).flatten()
    return WarpedKeypoints(source_norm, warped_norm, warped, valid)


def _within_chebyshev(points: torch.Tensor, radius: float) -> torch.Tensor:
    """``(B, N, N)`` bool: ``max(|dx|, |dy|) <= radius`` for every pair of ``(B, N, 2)`` points.

    ``cdist(p=inf)`` on a CPU, where it is the fastest way; its CUDA kernel is slow, so elsewhere plain
    broadcasting (same values; see docs/notes-from-code.md).
    """
    if points.device.type == "cpu":
        return torch.cdist(points, points, p=float("inf")) <= radius
    return _within_chebyshev_broadcast(points, radius)


def _within_chebyshev_broadcast(points: torch.Tensor, radius: float) -> torch.Tensor:
    """:func:`_within_chebyshev` by broadcasting, one coordinate at a time (two ``(B, N, N)`` temporaries)."""
    x, y = points.unbind(dim=-1)
    near_x = (x[:, :, None] - x[:, None, :]).abs_() <= radius
    return near_x & ((y[:, :, None] - y[:, None, :]).abs_() <= radius)


def _nearest(points: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N)`` distance from each ``(B, N, 2)`` point to the nearest ``(B, M, 2)`` target, and its index.

    The argmin has no gradient, the distance has (0 where the two coincide).
    """
    with torch.no_grad():
        # On a CPU from the coordinates' differences, as the original, because the matrix-product form
        # rounds and picks another cell now and then; on GPUs the product form is the fast one.
        mode = "donot_use_mm_for_euclid_dist" if targets.device.type == "cpu" else "use_mm_for_euclid_dist"
        index = torch.cdist(points, targets, compute_mode=mode).argmin(dim=2)
    matched = torch.gather(targets, 1, index.unsqueeze(-1).expand(-1, -1, 2))
    return (points - matched).norm(dim=-1), index


def nearest_target(warped: WarpedKeypoints, target_coord: torch.Tensor, threshold: float) -> NearestTarget:
    """Nearest target keypoint of each warped source keypoint (argmin without gradient, distance with)."""
    distance, index = _nearest(warped.warped, _flatten_cells(target_coord))
    return NearestTarget(distance, index, warped.valid & (distance < threshold))


def location_loss(nearest: NearestTarget) -> torch.Tensor:
    """Mean pixel distance to the nearest target keypoint over valid cells closer than the threshold."""
    return _masked_mean(nearest.distance, nearest.close)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` holds (NaN when it holds nowhere, as the mean of an empty selection).

    The same number as ``values[mask].mean()`` without boolean indexing, whose output size makes a GPU
    wait for the host.
    """
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum()


def score_loss(
    source_score: torch.Tensor,
    target_score: torch.Tensor,
    warped: WarpedKeypoints,
    nearest: NearestTarget,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two score terms.

    (a) ``mean((s_src + s_tgt[nearest]) * (d - mean d))`` over close cells: high scores where the
    keypoints are repeatable. (b) ``MSE(s_src, s_tgt sampled at the warp)`` over valid cells (the caller
    doubles it).

    Args:
        source_score, target_score: ``(B, 1, Hc, Wc)``.
    """
    source = source_score.flatten(1)  # (B, N)
    target_at_nearest = torch.gather(target_score.flatten(1), 1, nearest.index)
    centred = nearest.distance - _masked_mean(nearest.distance, nearest.close)
    usp = _masked_mean((target_at_nearest + source) * centred, nearest.close)
    resampled = F.grid_sample(
        target_score, warped.warped_norm.detach().unsqueeze(1), mode="bilinear", align_corners=True
    ).flatten(1)  # (B, N)
    mse = _masked_mean((resampled - source).square(), warped.valid)
    return usp, mse


def _sample_unit_descriptors(
    desc: torch.Tensor,
    points_norm: torch.Tensor,
    sampling: str = "original",
    shape_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Sample ``(B, C, h, w)`` descriptors at ``(B, N, 2)`` normalised points; returns unit ``(B, N, C)``.

    ``points_norm`` as :func:`~kp2d.geometry.normalize_points` gives them; ``sampling`` (``loss.
    descriptor_sampling``) says how the map is read there, ``"centred"`` needing the input's ``(H, W)``.
    """
    grid = points_norm  # the original reading's grid is the normalised points themselves
    if sampling != "original":
        if shape_hw is None:
            raise ValueError("reading descriptors centred needs the input's (H, W)")
        height, width = shape_hw
        grid = descriptor_grid(denormalize_points(points_norm, height, width), height, width, sampling)
    sampled = read_map(desc, grid.unsqueeze(1), sampling).squeeze(2).transpose(1, 2)
    # A point well outside the map samples zeros (read the original way; centred, it repeats the edge cell);
    # the clamp keeps it at 0 rather than 0 / 0 = NaN, which would reach the loss (and the gradients)
    # through the validity mask's multiplication. Such points are invalid either way.
    return sampled / sampled.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


def _descriptor_distance(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
    """``(B, N, C) x (B, M, C)`` unit descriptors → ``(B, N, M)`` L2 distances ``sqrt(2 - 2 cos)``."""
    cosine = (desc0 @ desc1.transpose(1, 2)).clamp(-1, 1)
    return (2 - 2 * cosine).clamp_min(1e-12).sqrt()


def _similarity(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
    """``(B, N, C) x (B, M, C)`` unit descriptors → ``(B, N, M)`` cosines clamped to [-1, 1], no autograd.

    The L2 distance ``sqrt(2 - 2 cos)`` falls as the cosine rises, so the nearest descriptor is the one of
    the largest cosine: the negative mining needs no distances (four fewer passes over ``N x M``).
    """
    return torch.bmm(desc0, desc1.transpose(1, 2)).clamp_(-1, 1)


def descriptor_loss(
    source_desc: torch.Tensor,
    target_desc: torch.Tensor,
    warped: WarpedKeypoints,
    config: LossConfig,
    with_loss: bool = True,
    shape_hw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest-negative triplet loss on descriptors, and the descriptor recall.

    Per image, over valid cells (images with fewer than ``config.min_valid_cells`` are skipped): the anchor
    is the source descriptor at ``p_s``, the positive the target descriptor at ``H(p_s)``, the negative the
    target descriptor (sampled at another cell's warped point) nearest to the anchor among those whose
    warped point is more than ``relax_field`` px away in x or y. Both terms are averaged over the batch
    (a skipped image counts as 0).

    Args:
        source_desc, target_desc: dense ``(B, C, h, w)`` descriptor maps, read at the points as
            ``config.descriptor_sampling`` says.
        shape_hw: ``(H, W)`` of the network input; needed when the maps are read centred.

    Returns:
        ``(loss, recall)``; ``recall`` is the fraction of anchors whose nearest target descriptor is the
        positive.
    """
    batch = source_desc.shape[0]
    reading = (config.descriptor_sampling, shape_hw)
    anchors = _sample_unit_descriptors(source_desc, warped.source_norm.detach(), *reading)  # (B, N, C)
    positives = _sample_unit_descriptors(target_desc, warped.warped_norm.detach(), *reading)
    valid = warped.valid
    used = valid.sum(dim=1) >= config.min_valid_cells  # (B,)

    with torch.no_grad():
        # Rows of invalid anchors are never used, so masking the invalid candidates (columns) is enough.
        # Nearest = largest cosine; the original's distance 2 for candidates within the relax field is a
        # cosine of -1, an excluded invalid candidate -inf (argmax takes the first of equals, as argmin).
        similarity = _similarity(anchors, positives).masked_fill_(~valid.unsqueeze(1), -float("inf"))
        positions = warped.warped  # (B, N, 2) target pixels of every candidate
        nearest = similarity.argmax(dim=2)  # (B, N)
        nearest_position = torch.gather(positions, 1, nearest.unsqueeze(-1).expand(-1, -1, 2))
        correct = (nearest_position == positions).all(dim=-1) & valid
        near = _within_chebyshev(positions, config.relax_field)  # (B, N, N)
        negative = similarity.masked_fill_(near, -1.0).argmax(dim=2)  # (B, N)

    counts = valid.sum(dim=1).clamp_min(1)
    recall = ((correct.sum(dim=1) / counts) * used).sum() / batch
    if not with_loss:
        return anchors.new_zeros(()), recall
    negatives = torch.gather(positives, 1, negative.unsqueeze(-1).expand_as(positives))
    per_anchor = F.triplet_margin_loss(
        anchors.flatten(0, 1), positives.flatten(0, 1), negatives.flatten(0, 1), margin=config.triplet_margin,
        reduction="none",
    ).view(batch, -1)
    per_image = (per_anchor * valid).sum(dim=1) / counts
    return (per_image * used).sum() / batch, recall


def io_loss(
    source: KeyPointNetOutput,
    target: KeyPointNetOutput,
    warped: WarpedKeypoints,
    io_net: IONet,
    config: LossConfig,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IO-Net proxy task: classify putative matches between selected source and target cells.

    ``config.io_top_k`` cells of each image are selected by score (``io_selection``: the original code
    takes the *lowest* scores, the paper's text the highest); each selected source point is matched to
    its nearest selected target point in descriptor space; IO-Net scores ``(x_s, y_s, x_t, y_t, d)`` and is
    regressed (MSE) to +1 where the match lands within ``io_inlier_threshold`` px of the true warp, else -1.
    Gradients flow into KeyPointNet through coordinates and descriptor distances.

    Returns:
        ``(loss, inliers)``: the loss is 0 unless the batch has more than ``io_min_inliers`` inliers.
    """
    largest = config.io_selection == "highest"

    def select(scores: torch.Tensor) -> torch.Tensor:
        count = min(config.io_top_k, scores[0].numel())
        index = scores.flatten(1).topk(count, dim=1, largest=largest).indices
        return index.sort(dim=1).values  # raster order, as the original's mask selection

    def gather_points(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(points, 1, index.unsqueeze(-1).expand(-1, -1, points.shape[-1]))

    source_index, target_index = select(source.score), select(target.score)
    target_norm = normalize_points(_flatten_cells(target.coord), height, width)
    source_points = gather_points(warped.source_norm, source_index)  # (B, K, 2)
    target_points = gather_points(target_norm, target_index)
    source_warped = gather_points(warped.warped_norm, source_index)

    reading = (config.descriptor_sampling, (height, width))
    distance = _descriptor_distance(
        _sample_unit_descriptors(source.desc, source_points, *reading),
        _sample_unit_descriptors(target.desc, target_points, *reading),
    )
    match_distance, match_index = distance.min(dim=2)  # (B, K)
    matched_points = gather_points(target_points, match_index)
    correspondences = torch.cat([source_points, matched_points, match_distance.unsqueeze(-1)], dim=-1)
    prediction = io_net(correspondences.transpose(1, 2).unsqueeze(-1)).view(correspondences.shape[:2])

    error = (
        denormalize_points(matched_points, height, width) - denormalize_points(source_warped, height, width)
    )
    inlier = error.norm(dim=-1) < config.io_inlier_threshold
    inliers = inlier.sum()
    loss = F.mse_loss(prediction, inlier.to(prediction.dtype) * 2 - 1)
    # torch.where rather than `if`: deciding on the host would make a GPU wait for it every step.
    return torch.where(inliers > config.io_min_inliers, loss, loss.new_zeros(())), inliers


def keypoint_net_losses(
    source: KeyPointNetOutput,
    target: KeyPointNetOutput,
    homography: torch.Tensor,
    shape_hw: tuple[int, int],
    config: LossConfig,
    io_net: IONet | None = None,
) -> LossTerms:
    """All training losses of one batch.

    Args:
        source, target: training-mode network outputs (dense descriptors) of the source and target images.
        homography: ``(B, 3, 3)`` source-normalised → target-normalised.
        shape_hw: ``(H, W)`` of the network input.
        config: weights and thresholds.
        io_net: IO-Net; ``None`` disables the IO loss.
    """
    height, width = shape_hw
    source, target = (KeyPointNetOutput(*(t.float() for t in out)) for out in (source, target))
    warped = warp_source_keypoints(source.coord, homography.float(), height, width)
    nearest = nearest_target(warped, target.coord, config.location_threshold)

    location = location_loss(nearest)
    triplet, recall = descriptor_loss(
        source.desc, target.desc, warped, config, with_loss=config.descriptor_loss, shape_hw=(height, width)
    )
    usp, mse = score_loss(source.score, target.score, warped, nearest)
    zero = location.new_zeros(())
    io, inliers = (zero, zero.long()) if io_net is None else io_loss(
        source, target, warped, io_net, config, height, width
    )
    total = (
        config.keypoint_loss_weight * (location + io)
        + config.descriptor_loss_weight * TRIPLET_FACTOR * triplet
        + config.score_loss_weight * (usp + SCORE_MSE_FACTOR * mse)
    )
    return LossTerms(total, location, triplet, usp, mse, io, recall, inliers, zero, zero, zero)


def distillation_loss(
    student: KeyPointNetOutput,
    teacher: KeyPointNetOutput,
    height: int,
    width: int,
    term_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """How far a network's outputs are from a teacher's on the same ``height x width`` images.

    The sum of three terms, each 0 for identical outputs, weighted by ``term_weights`` (score, location,
    descriptor): the score maps' mean absolute difference; the keypoints' distance in cells (``|dx| + |dy|``
    over :data:`CELL` px), weighted by the teacher's score; and ``1 - cos`` between the two descriptor maps
    sampled at the teacher's keypoints, weighted likewise.
    Descriptor maps of different strides (a teacher with upsampling, a student without) compare, as both
    are sampled at pixel positions. Shapes as :class:`KeyPointNetOutput`; the teacher's are constants.
    """
    student = KeyPointNetOutput(*(t.float() for t in student))
    score_weight, location_weight, descriptor_weight = term_weights
    score = (student.score - teacher.score).abs().mean()
    weight = teacher.score.flatten(1)  # (B, N): keypoints the teacher would pick count most
    weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(1e-6)
    cells = (student.coord - teacher.coord).abs().sum(dim=1).flatten(1) / CELL
    location = (weight * cells).sum(dim=1).mean()
    student_desc = sample_descriptors(student.desc, teacher.coord, height, width).flatten(2)
    teacher_desc = sample_descriptors(teacher.desc.float(), teacher.coord, height, width).flatten(2)
    cosine = (student_desc * teacher_desc).sum(dim=1)  # (B, N)
    descriptor = (weight * (1.0 - cosine)).sum(dim=1).mean()
    return score_weight * score + location_weight * location + descriptor_weight * descriptor


def warped_distillation_loss(
    student_target: KeyPointNetOutput,
    teacher_source: KeyPointNetOutput,
    homography: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """How far the network's outputs on the *target* image are from the teacher's on the source.

    The teacher's keypoints are warped into the target by ``homography`` (``(B, 3, 3)``, source-normalised
    → target-normalised); at the warped points the network's score map (bilinear over its cells) should
    equal the teacher's score and its descriptor the teacher's (``1 - cos``), both weighted by the
    teacher's score over the keypoints that land inside the target. Since the teacher only ever sees the
    unwarped image, this asks for invariance to the sampled homographies that the teacher may not have.
    """
    student = KeyPointNetOutput(*(t.float() for t in student_target))
    warped = warp_source_keypoints(teacher_source.coord.float(), homography.float(), height, width)
    valid = warped.valid.float()  # (B, N)
    weight = teacher_source.score.float().flatten(1) * valid
    weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(1e-6)
    grid = warped.warped_norm.unsqueeze(1)  # (B, 1, N, 2)
    resampled = F.grid_sample(student.score, grid, mode="bilinear", align_corners=True).flatten(1)
    # no keypoint inside the target gives 0, not the NaN of an empty mean
    teacher_score = teacher_source.score.float().flatten(1)
    score = ((resampled - teacher_score).abs() * valid).sum() / valid.sum().clamp_min(1)
    student_desc = _sample_unit_descriptors(student.desc, warped.warped_norm)  # (B, N, C)
    teacher_coord = teacher_source.coord.float()
    teacher_desc = sample_descriptors(teacher_source.desc.float(), teacher_coord, height, width)
    cosine = (student_desc * _flatten_cells(teacher_desc)).sum(dim=-1)  # (B, N)
    descriptor = (weight * (1.0 - cosine)).sum(dim=1).mean()
    return score + descriptor


def warped_location_loss(
    student_target: KeyPointNetOutput,
    teacher_source: KeyPointNetOutput,
    homography: torch.Tensor,
    height: int,
    width: int,
    threshold: float,
) -> torch.Tensor:
    """How far the network's keypoints on the *target* are from the teacher's source keypoints warped there.

    Each teacher keypoint that lands inside the target (``homography`` ``(B, 3, 3)``, source-normalised →
    target-normalised) is paired with the network's nearest target keypoint; the pixel distance, where it
    is under ``threshold``, is averaged with the teacher's score as weight (0 when no pair is close). The
    teacher sees only the unwarped source, so this asks the network for keypoints that keep their place
    under the sampled warps and zooms.
    """
    warped = warp_source_keypoints(teacher_source.coord.float(), homography.float(), height, width)
    nearest = nearest_target(warped, student_target.coord.float(), threshold)
    return _weighted_distance(nearest.distance, teacher_source.score, nearest.close)


def shift_consistency_loss(
    base: KeyPointNetOutput | CellOutput,
    shifted: KeyPointNetOutput | CellOutput,
    shift: tuple[int, int],
    threshold: float,
) -> torch.Tensor:
    """How far the keypoints of a copy of the image cut ``shift`` = ``(dx, dy)`` pixels in move from its own.

    ``base`` is the network on ``(B, 3, H, W)`` images, ``shifted`` on ``images[..., dy:, dx:]`` cut to
    multiples of :data:`CELL` (keypoints ``(B, 2, Hc', Wc')`` in the copy's pixels). A shift that is not a
    multiple of the cell moves the content against the cell grid; an exact detector's keypoints move with
    the content. Each keypoint of an interior base cell that lies a cell inside the copy is paired with the
    copy's nearest keypoint moved back by the shift; the pixel distance, where under ``threshold``, is
    averaged with the base score (a constant) as weight; 0 when no pair is close.
    """
    dx, dy = shift
    rows, cols = base.coord.shape[-2:]
    points = _flatten_cells(base.coord.float())  # (B, N, 2)
    moved = _flatten_cells(shifted.coord.float()) + points.new_tensor([dx, dy])
    cut_height, cut_width = (CELL * size for size in shifted.coord.shape[-2:])
    x, y = points.unbind(dim=-1)
    inside = (x >= dx + CELL) & (x <= dx + cut_width - 1 - CELL) & (y >= dy + CELL)
    inside = inside & (y <= dy + cut_height - 1 - CELL)
    valid = inside & interior_mask(rows, cols, device=points.device).flatten()
    distance, _ = _nearest(points, moved)
    return _weighted_distance(distance, base.score.detach(), valid & (distance < threshold))


def scale_consistency_loss(
    base: KeyPointNetOutput | CellOutput,
    coarse: KeyPointNetOutput | CellOutput,
    threshold: float,
) -> torch.Tensor:
    """How far the keypoints of a reduced copy of the image lie from the image's own, in the copy's pixels.

    ``base`` is the network on ``(B, 3, H, W)`` images, ``coarse`` on the same images resized to ``(H', W')``
    (each side smaller; keypoints ``(B, 2, H'/8, W'/8)`` in the copy's pixels): both sizes are their cell
    grids'. An exact detector's keypoints move with the content whatever the input's scale, as a zoom between
    two views needs. Each keypoint of an interior copy cell, mapped to the image about pixel centres
    (:func:`~kp2d.features.extraction.to_image_pixels`), is paired with the image's nearest keypoint; the
    distance, in the copy's pixels and where under ``threshold``, is averaged with the copy's score (a
    constant) as weight; 0 when no pair is close.
    """
    rows, cols = coarse.coord.shape[-2:]
    base_rows, base_cols = base.coord.shape[-2:]
    copy_size, image_size = (CELL * cols, CELL * rows), (CELL * base_cols, CELL * base_rows)
    points = _flatten_cells(to_image_pixels(coarse.coord.float(), copy_size, image_size))  # (B, N, 2)
    fine_distance, _ = _nearest(points, _flatten_cells(base.coord.float()))
    distance = fine_distance * (cols / base_cols + rows / base_rows) / 2
    valid = interior_mask(rows, cols, device=points.device).flatten()
    return _weighted_distance(distance, coarse.score.detach(), valid & (distance < threshold))


def _weighted_distance(distance: torch.Tensor, score: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The score-weighted mean of ``(B, N)`` pixel distances where ``(B, N)`` ``keep``; 0 if none is kept.

    ``score`` ``(B, 1, Hc, Wc)`` gives each of the N = Hc·Wc cells its weight.
    """
    weight = score.float().flatten(1) * keep
    return (weight * distance).sum() / weight.sum().clamp_min(1e-6)
