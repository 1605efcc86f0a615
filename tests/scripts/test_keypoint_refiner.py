"""``scripts/keypoint_refiner.py``: patches, moves and the training disagreement by hand; errors."""

from __future__ import annotations

import pytest
import torch

from cli_output import single_error_line


@pytest.fixture
def refiner_script(load_script):
    return load_script("keypoint_refiner")


@pytest.mark.parametrize(("keypoint", "scale"), [((30.5, 25.5), 1.0), ((41.0, 33.0), 0.5)])
def test_patches_are_the_image_at_the_keypoint_plus_steps_over_the_scale(refiner_script, keypoint, scale):
    """Where every sample falls on a pixel centre, the patch of ``gray = x + 100 y`` about ``(x0, y0)`` at
    scale ``s`` holds ``x0 + u / s + 100 (y0 + v / s)``, ``u, v`` the patch offsets from its centre."""
    height, width = 60, 80
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    keypoints = torch.tensor([keypoint])
    patches = refiner_script.sample_patches(xs + 100 * ys, keypoints, scale, 6)
    steps = (torch.arange(6) - 2.5) / scale
    expected = keypoint[0] + steps[None, :] + 100 * (keypoint[1] + steps[:, None])
    assert patches.shape == (1, 1, 6, 6)
    torch.testing.assert_close(patches[0, 0], expected, atol=1e-3, rtol=0)


def test_a_refiner_that_sees_nothing_leaves_the_keypoints(refiner_script):
    """Zero convolutions leave only the prior, symmetric about the centre: its soft-argmax is no move."""
    refiner = refiner_script.Refiner()
    for parameter in refiner.body.parameters():
        torch.nn.init.zeros_(parameter)
    gray = torch.rand(48, 64)
    keypoints = torch.tensor([[20.3, 17.9], [40.0, 30.0]])
    moved = refiner_script.refine(refiner, gray, keypoints, 2.8)
    torch.testing.assert_close(moved, keypoints, atol=1e-5, rtol=0)


def _right_mover(refiner_script):
    """A refiner whose scores are +50 on the patch's last column, 0 elsewhere, under a flat prior: nearly all
    the soft-argmax's weight lies there, 11.5 patch px right of the centre."""
    refiner = refiner_script.Refiner()
    for parameter in refiner.body.parameters():
        torch.nn.init.zeros_(parameter)
    refiner.log_sigma.data.fill_(10.0)
    refiner.body.register_forward_hook(
        lambda module, inputs, output: output + torch.where(torch.arange(24) == 23, 50.0, 0.0)
    )
    return refiner


def test_a_move_in_run_pixels_is_divided_by_the_run_scale(refiner_script):
    """A refiner whose scores peak at the patch's last column moves every keypoint right by that column's
    offset (11.5 patch px at 24 px) in patch px, so by 11.5 / s image px."""
    refiner = _right_mover(refiner_script)
    keypoints = torch.tensor([[20.0, 20.0]])
    moved = refiner_script.refine(refiner, torch.rand(48, 64), keypoints, 2.5)
    torch.testing.assert_close(moved, torch.tensor([[20.0 + 11.5 / 2.5, 20.0]]), atol=1e-4, rtol=0)


def test_the_disagreement_of_a_known_offset(refiner_script):
    """View b is view a moved 10 px right; b's keypoints sit 0.5 px further right, so unmoved they disagree by
    -0.5 image px in x, -0.5 * 1.25 run px of a x1.25 run."""
    translation = torch.tensor([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]])
    keypoints_a = torch.tensor([[30.0, 40.0], [100.0, 60.0]])
    data = {
        "ka": keypoints_a,
        "kb": keypoints_a + torch.tensor([10.5, 0.0]),
        "sa": torch.tensor([2.8, 2.8]),
        "sb": torch.tensor([1.25, 1.25]),
        "T": translation[None].expand(2, 3, 3),
        "pa": torch.zeros(2, 32, 32),
        "pb": torch.zeros(2, 32, 32),
    }
    error, moves = refiner_script._disagreement(None, data, torch.arange(2))
    torch.testing.assert_close(error, torch.tensor([[-0.625, 0.0], [-0.625, 0.0]]))
    assert moves.shape == (4, 2) and not moves.any()
    # with max_scale 2 only the x1.25 keypoints move: 11.5 run px right, so the disagreement grows by 11.5
    error, moves = refiner_script._disagreement(_right_mover(refiner_script), data, torch.arange(2), 2.0)
    torch.testing.assert_close(moves, torch.tensor([[0.0, 0.0]] * 2 + [[11.5, 0.0]] * 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(error, torch.tensor([[-12.125, 0.0]] * 2), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pairs", "OUT.npz", "--pairs", "0"], "--pairs must be at least 1"),
        (["pairs", "OUT.npz", "--photos", "MISSING"], "--photos MISSING: no such folder"),
        (["train", "OUT.pt", "--data", "MISSING.npz", "--val", "MISSING.npz"], "MISSING.npz: no such file"),
        (["eval", "MISSING.pt", "--hpatches", "."], "MISSING.pt: no such file"),
    ],
)
def test_user_mistakes_are_one_line_and_nothing_written(
    refiner_script, capsys, tmp_path, monkeypatch, args, message
):
    monkeypatch.chdir(tmp_path)
    assert refiner_script.main(args) == 2
    assert single_error_line(capsys).startswith(f"keypoint_refiner: error: {message}")
    assert not list(tmp_path.iterdir())


def test_eval_refuses_a_bad_shape(refiner_script, capsys, tmp_path):
    saved = tmp_path / "r.pt"
    torch.save({"channels": 8, "state_dict": refiner_script.Refiner().state_dict()}, saved)
    assert refiner_script.main(["eval", str(saved), "--hpatches", str(tmp_path), "--shape", "320"]) == 2
    assert "--shape must be WIDTHxHEIGHT (e.g. 320x240), got '320'" in single_error_line(capsys)
    assert [path.name for path in tmp_path.iterdir()] == ["r.pt"]


def test_eval_refuses_a_file_that_is_not_a_refiner(refiner_script, capsys, tmp_path):
    saved = tmp_path / "r.pt"
    saved.write_text("not a checkpoint")
    assert refiner_script.main(["eval", str(saved), "--hpatches", str(tmp_path), "--json", "x.json"]) == 2
    assert "not a refiner saved by" in single_error_line(capsys)
    assert [path.name for path in tmp_path.iterdir()] == ["r.pt"]


def test_train_refuses_a_max_scale_no_pair_reaches(refiner_script, capsys, tmp_path):
    import numpy as np

    pairs = tmp_path / "p.npz"
    scales = np.full(3, 2.8, dtype=np.float32)
    np.savez(pairs, sa=scales, sb=scales, ka=np.zeros((3, 2), np.float32), kb=np.zeros((3, 2), np.float32),
             T=np.tile(np.eye(3, dtype=np.float32), (3, 1, 1)), pa=np.zeros((3, 32, 32), np.float32),
             pb=np.zeros((3, 32, 32), np.float32))
    args = ["train", str(tmp_path / "r.pt"), "--data", str(pairs), "--val", str(pairs), "--max-scale", "1.25"]
    assert refiner_script.main(args) == 2
    assert single_error_line(capsys) == (
        "keypoint_refiner: error: --max-scale 1.25: no pair in --data has a run at that scale"
    )
    assert [path.name for path in tmp_path.iterdir()] == ["p.npz"]


def test_max_scale_leaves_the_finer_runs_alone(refiner_script):
    """With ``max_scale`` 1.25 a run at x1.25 has its best cells moved right by 11.5 / 1.25 px (the refiner of
    the test above) and a run at x2.8 keeps the network's keypoints."""
    from kp2d.eval.hpatches import KeyPointNetDetector
    from kp2d.models.keypoint_net import load_keypoint_net

    refiner = _right_mover(refiner_script)
    model = load_keypoint_net("litefast")
    plain = KeyPointNetDetector(model, "cpu")
    refined = refiner_script.RefinedDetector(refiner, 5, model, "cpu", max_scale=1.25)
    batch = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    before, after = plain._cells(batch, 2.8), refined._cells(batch, 2.8)
    assert torch.equal(after.coords, before.coords)
    before, after = plain._cells(batch, 1.25), refined._cells(batch, 1.25)
    moves = (after.coords - before.coords).flatten(2)[0]  # (2, cells): x, y
    moved = moves.abs().sum(0) > 0
    assert int(moved.sum()) == 5 and torch.all(moves[1] == 0)
    torch.testing.assert_close(moves[0, moved], torch.full((5,), 11.5 / 1.25), atol=1e-3, rtol=0)
