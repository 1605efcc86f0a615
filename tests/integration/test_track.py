"""``kp2d.track`` and ``kp2d track``: persistent ids on a tiny synthetic video with a known shift."""

import json
import logging
import re

import cv2
import numpy as np
import pytest
import torch

from cli_output import single_error_line
from kp2d.cli import main
from kp2d.errors import ConfigError
from kp2d.models import KeyPointNet
from kp2d.tracking import DenseFrame, GuidedTracker, Tracker, mutual_nearest, track
from kp2d.video import natural_key, open_frames

WIDTH, HEIGHT, FRAMES = 160, 120, 10
SHIFT = np.array([2.0, 1.0])  # (dx, dy) pixels per frame: the scene moves right and down


@pytest.fixture(scope="module")
def model():
    return KeyPointNet.from_pretrained("v4")


@pytest.fixture(scope="module")
def frames():
    """Windows of a photo: frame t shows the scene shifted by ``t * SHIFT`` (p in frame 0 is p + t*SHIFT)."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    x0, y0 = 60, 70
    out = []
    for t in range(FRAMES):
        dx, dy = (t * SHIFT).astype(int)
        out.append(np.ascontiguousarray(photo[y0 - dy: y0 - dy + HEIGHT, x0 - dx: x0 - dx + WIDTH]))
    return out


def _folder(tmp_path, frames, name="frames"):
    folder = tmp_path / name
    folder.mkdir()
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"f{t}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def _video(tmp_path, frames, name="clip.avi"):
    path = tmp_path / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# ---------------------------------------------------------------------------------------------- library


def test_mutual_nearest_known_pairs():
    desc0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    desc1 = torch.tensor([[0.0, 1.0], [1.0, 0.1]])
    # 0 <-> 1 and 1 <-> 0 are mutual; 2's nearest is 1, whose nearest is 0: not mutual
    assert mutual_nearest(desc0, desc1).tolist() == [[0, 1], [1, 0]]
    assert mutual_nearest(desc0[:0], desc1).shape == (0, 2)


def test_tracker_link_ids_by_hand():
    tracker = Tracker(geometry="none")
    first = tracker.link(0, np.array([[0, 0], [5, 5], [9, 9]]), np.ones(3), np.zeros((0, 2)), (20, 20))
    assert first.track_ids.tolist() == [0, 1, 2] and first.is_new.all()
    # keypoint 0 continues track 2, keypoint 2 continues track 0, keypoint 1 is new
    points = np.array([[9, 9], [3, 3], [0, 1]])
    second = tracker.link(1, points, np.ones(3), np.array([[2, 0], [0, 2]]), (20, 20))
    assert second.track_ids.tolist() == [2, 3, 0]
    assert second.is_new.tolist() == [False, True, False]
    assert second.previous.tolist() == [2, -1, 0]
    assert tracker.next_id == 4


def test_homography_check_drops_a_wrong_match():
    grid = np.stack(np.meshgrid(np.arange(0, 100, 20.0), np.arange(0, 100, 20.0)), -1).reshape(-1, 2)
    tracker = Tracker(geometry="homography", threshold=2.0)
    tracker.link(0, grid, np.ones(len(grid)), np.zeros((0, 2)), (100, 100))
    moved = grid + SHIFT
    moved[3] += [30.0, -20.0]  # a wrong match
    pairs = np.stack([np.arange(len(grid))] * 2, 1)
    result = tracker.link(1, moved, np.ones(len(grid)), pairs, (100, 100))
    assert result.is_new.tolist() == [i == 3 for i in range(len(grid))]
    assert result.num_inliers == len(grid) - 1


def test_lost_track_resumed_with_its_id():
    points = np.array([[10, 10], [90, 12], [50, 50], [12, 88], [85, 80], [40, 70], [70, 30]], np.float32)
    descriptors = torch.eye(len(points))
    tracker = Tracker(geometry="homography", memory=2)
    first = tracker.step(0, points, np.ones(7), descriptors, (100, 100))
    missing = np.arange(7) != 2  # keypoint 2 is not detected in frame 1
    second = tracker.step(1, points[missing] + SHIFT, np.ones(6), descriptors[missing], (100, 100))
    assert second.track_ids.tolist() == first.track_ids[missing].tolist()
    third = tracker.step(2, points + 2 * SHIFT, np.ones(7), descriptors, (100, 100))
    assert third.track_ids.tolist() == first.track_ids.tolist()  # id 2 again, no new track
    assert not third.is_new.any() and third.previous[2] == -1 and tracker.next_id == 7
    # without memory the point comes back as a new track
    tracker = Tracker(geometry="homography", memory=0)
    tracker.step(0, points, np.ones(7), descriptors, (100, 100))
    tracker.step(1, points[missing] + SHIFT, np.ones(6), descriptors[missing], (100, 100))
    again = tracker.step(2, points + 2 * SHIFT, np.ones(7), descriptors, (100, 100))
    assert again.track_ids[2] == 7 and again.is_new.tolist() == [i == 2 for i in range(7)]


def _dense(points, descriptors, selected, shape=(4, 4), cell=8.0):
    """A DenseFrame whose cell ``i`` holds ``points[i]`` (unit ``descriptors[i]``), all cells valid."""
    count = shape[0] * shape[1]
    return DenseFrame(
        coords=np.asarray(points, np.float32), scores=np.linspace(1, 0.5, count, dtype=np.float32),
        descriptors=descriptors, valid=np.ones(count, bool), grid=shape, cell=(cell, cell),
        selected=np.asarray(selected, np.int64),
    )


def test_guided_continues_a_track_outside_the_top_k():
    # a 4x4 grid of cells, keypoint of cell (r, c) at its centre; 16 distinct unit descriptors
    rows, cols = np.mgrid[0:4, 0:4]
    centres = np.stack([cols.ravel() * 8 + 3.5, rows.ravel() * 8 + 3.5], 1).astype(np.float32)
    descriptors = torch.eye(16)
    tracker = GuidedTracker(threshold=3.0, memory=0, top_k=8, search_radius=2.0)
    tracked = [0, 3, 5, 6, 9, 10, 12, 15]
    first = tracker.step(0, _dense(centres, descriptors, tracked), (32, 32))
    assert first.track_ids.tolist() == list(range(8)) and first.is_new.all()
    # frame 1: the scene moves by (1, 0.5) px; the detector's top-k misses cell 6 (a new cell 7 instead)
    moved = centres + np.array([1.0, 0.5], np.float32)
    second = tracker.step(1, _dense(moved, descriptors, [0, 3, 5, 7, 9, 10, 12, 15]), (32, 32))
    # cell 6 continued track 3 from the dense output
    np.testing.assert_allclose(second.keypoints[second.track_ids == 3], moved[6:7], atol=1e-5)
    continued = ~second.is_new
    assert continued.sum() == 8 and sorted(second.track_ids[continued].tolist()) == list(range(8))
    np.testing.assert_allclose(second.keypoints[continued], moved[tracked], atol=1e-5)
    assert (second.previous[continued] == np.arange(8)).all()
    # cell 7 lies 8 px from every track: it starts track 8, but the 8 continued tracks fill top_k
    assert second.is_new.sum() == 0 and tracker.next_id == 8


def test_guided_rejects_a_far_or_unlike_keypoint():
    centres = np.array([[3.5 + 8 * (i % 4), 3.5 + 8 * (i // 4)] for i in range(16)], np.float32)
    descriptors = torch.eye(16)
    tracker = GuidedTracker(threshold=3.0, memory=0, top_k=16, max_distance=0.5, search_radius=2.0)
    tracker.step(0, _dense(centres, descriptors, [5]), (32, 32))
    # no top-k match (nothing selected): predicted in place; cell 5's keypoint is 3 px away (> radius)
    far = centres.copy()
    far[5] += 3.0
    assert tracker.step(1, _dense(far, descriptors, []), (32, 32)).track_ids.tolist() == []
    tracker = GuidedTracker(threshold=3.0, memory=0, top_k=16, max_distance=0.5, search_radius=2.0)
    tracker.step(0, _dense(centres, descriptors, [5]), (32, 32))
    unlike = descriptors.clone()
    unlike[5] = torch.nn.functional.normalize(torch.ones(16), dim=0)  # distance > 0.5 from e5
    assert tracker.step(1, _dense(centres, unlike, []), (32, 32)).track_ids.tolist() == []


def _check_follows_shift(results, steps):
    """Continued keypoints sit at their predecessor + steps * SHIFT (within 2 px); most keypoints continue."""
    for before, after, step in zip(results, results[1:], steps, strict=False):
        assert (~after.is_new).mean() > 0.5, f"few tracks continue into frame {after.index}"
        kept = after.previous >= 0  # continued from the frame before (not resumed after a gap)
        np.testing.assert_array_equal(after.track_ids[kept], before.track_ids[after.previous[kept]])
        moved = after.keypoints[kept] - before.keypoints[after.previous[kept]]
        error = np.linalg.norm(moved - step * SHIFT, axis=1)
        # each detection is off by under a pixel, so a step is off by up to two; RANSAC allows 3 from its fit
        assert np.median(error) < 1.0 and (error < 2.0).mean() > 0.9 and error.max() < 4.0


def test_ids_persist_under_known_translation(model, frames):
    results = list(track(frames, model=model, top_k=200))
    assert [r.index for r in results] == list(range(FRAMES))
    _check_follows_shift(results, [1] * FRAMES)
    # some tracks live through the whole clip, following the shift within 2 px (not drifting away)
    first = results[0]
    alive = set(first.track_ids.tolist())
    for result in results[1:]:
        alive &= set(result.track_ids.tolist())
    assert len(alive) >= 5
    deviations = []
    for track_id in sorted(alive):
        path = np.array([r.keypoints[r.track_ids == track_id][0] for r in results])
        truth = path[0] + np.arange(FRAMES)[:, None] * SHIFT
        deviations.append(np.linalg.norm(path - truth, axis=1).max())
    assert np.median(deviations) < 2.0


def _share_on_truth(results, pixels):
    """Share of tracks (2+ frames) whose every position is within ``pixels`` of first position + shift."""
    ids = np.concatenate([r.track_ids for r in results])
    xy = np.concatenate([r.keypoints for r in results])
    frame = np.concatenate([np.full(len(r), r.index) for r in results])
    on_truth = []
    for track_id in np.unique(ids):
        rows = np.flatnonzero(ids == track_id)
        if len(rows) >= 2:
            truth = xy[rows[0]] + (frame[rows] - frame[rows[0]])[:, None] * SHIFT
            on_truth.append(np.linalg.norm(xy[rows] - truth, axis=1).max() <= pixels)
    return np.mean(on_truth)


def test_guided_tracks_stay_on_the_truth(model, frames):
    # guided tracks are carried by the homography and only take a detection within 2 px of it
    guided = list(track(frames, model=model, top_k=200))
    plain = list(track(frames, model=model, top_k=200, guided=False))
    _check_follows_shift(plain, [1] * FRAMES)
    assert _share_on_truth(guided, 3.0) > 0.95 > _share_on_truth(plain, 3.0)


def test_unreadable_frame_skipped_ids_consistent(model, frames):
    clip = list(frames[:5])
    clip[2] = None
    results = list(track(clip, model=model, top_k=200))
    assert [r.index for r in results] == [0, 1, 3, 4]
    _check_follows_shift(results, [1, 2, 1])


def test_every_and_max_frames(model, frames):
    results = list(track(frames, model=model, top_k=100, every=3, max_frames=8))
    assert [r.index for r in results] == [0, 3, 6]
    _check_follows_shift(results, [3, 3])


def test_frames_of_another_size_refused(model, frames):
    from kp2d.errors import DataError

    with pytest.raises(DataError, match="frame 1 is 150x120"):
        list(track([frames[0], frames[1][:, :150]], model=model))


def test_natural_order():
    names = ["f10.png", "f2.png", "F1.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f2.png", "f10.png"]


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_video_outputs_consistent(tmp_path, frames, capsys):
    video = _video(tmp_path, frames)
    out, json_path, npz_path = tmp_path / "out" / "t.mp4", tmp_path / "t.json", tmp_path / "t.npz"
    assert main(["track", str(video), "--out", str(out), "--json", str(json_path), "--npz", str(npz_path),
                 "--top-k", "150"]) == 0
    printed = capsys.readouterr().out
    assert "fps:" in printed and "frames: 10 tracked" in printed
    record = json.loads(json_path.read_text())
    arrays = np.load(npz_path)
    assert sorted(arrays.files) == ["frame", "id", "score", "x", "y"]
    for name in arrays.files:
        np.testing.assert_allclose(record[name], arrays[name], atol=1e-3)
    assert record["image_size"] == [WIDTH, HEIGHT] and set(arrays["frame"].tolist()) == set(range(FRAMES))
    # per frame, every id appears at most once
    pairs = arrays["id"] * 1000 + arrays["frame"]
    assert len(np.unique(pairs)) == len(pairs)
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == FRAMES
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    assert not list(out.parent.glob("*.partial*"))


def test_cli_folder_with_corrupt_frame(tmp_path, frames, caplog):
    folder = _folder(tmp_path, frames[:5])
    (folder / "f2.png").write_bytes((folder / "f2.png").read_bytes()[:200])  # truncated in the middle
    npz_path = tmp_path / "t.npz"
    with caplog.at_level(logging.WARNING):
        assert main(["track", str(folder), "--npz", str(npz_path), "--top-k", "150", "--out",
                     str(tmp_path / "t.avi")]) == 0
    assert any("f2.png" in message and "skipped" in message for message in caplog.messages)
    arrays = np.load(npz_path)
    assert sorted(set(arrays["frame"].tolist())) == [0, 1, 3, 4]
    # tracks of frame 1 go on in frame 3 (matched across the bad frame), at the shift of two frames
    one, three = arrays["frame"] == 1, arrays["frame"] == 3
    common, i1, i3 = np.intersect1d(arrays["id"][one], arrays["id"][three], return_indices=True)
    assert len(common) > 50
    x, y = arrays["x"], arrays["y"]
    moved = np.stack([x[three][i3] - x[one][i1], y[three][i3] - y[one][i1]], 1)
    assert np.median(np.linalg.norm(moved - 2 * SHIFT, axis=1)) < 1.0
    assert cv2.VideoCapture(str(tmp_path / "t.avi")).get(cv2.CAP_PROP_FRAME_COUNT) == 4


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    line = single_error_line(capsys)
    for needle in needles:
        assert needle in line, line
    return line


def test_cli_not_a_video(tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video at all\n" * 50)
    _fails(capsys, ["track", str(fake), "--json", str(tmp_path / "t.json")], "not a video")
    _fails(capsys, ["track", str(tmp_path / "missing.avi"), "--json", str(tmp_path / "t.json")], "not found")


def test_cli_zero_frames(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    _fails(capsys, ["track", str(empty), "--json", str(tmp_path / "t.json")], "no frames")
    video = _video(tmp_path, [], "empty.avi")
    _fails(capsys, ["track", str(video), "--json", str(tmp_path / "t.json")], str(video))
    assert not (tmp_path / "t.json").exists()


def test_cli_frames_of_changing_size(tmp_path, frames, capsys):
    folder = _folder(tmp_path, frames[:3])
    cv2.imwrite(str(folder / "f3.png"), cv2.resize(frames[3], (80, 60)))
    _fails(capsys, ["track", str(folder), "--json", str(tmp_path / "t.json")], "f3.png is 80x60", "one size")
    assert not (tmp_path / "t.json").exists()


def test_cli_unwritable_outputs_checked_first(tmp_path, frames, capsys, monkeypatch):
    import kp2d.models.keypoint_net

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(kp2d.models.keypoint_net, "load_keypoint_net", no_model)
    video = _video(tmp_path, frames[:2])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(capsys, ["track", str(video), "--out", str(blocker / "t.mp4")], "--out", "is a file, not a folder")
    _fails(capsys, ["track", str(video), "--json", str(blocker / "t.json")], "--json")
    _fails(capsys, ["track", str(video), "--npz", str(blocker / "t.npz")], "--npz")
    _fails(capsys, ["track", str(video), "--out", str(tmp_path / "t.gif")], "unsupported video extension")
    _fails(capsys, ["track", str(video), "--out", str(tmp_path)], "is a folder")
    _fails(capsys, ["track", str(video)], "nothing to write")
    _fails(capsys, ["track", str(video), "--json", str(tmp_path / "t.json"), "--every", "0"], "--every")


def test_cli_ctrl_c_writes_what_is_done(tmp_path, frames, capsys, monkeypatch):
    import kp2d.tracking

    step, calls = kp2d.tracking.GuidedTracker.step, []

    def interrupted_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(kp2d.tracking.GuidedTracker, "step", interrupted_step)
    video = _video(tmp_path, frames)
    out, json_path, npz_path = tmp_path / "t.mp4", tmp_path / "t.json", tmp_path / "t.npz"
    argv = ["track", str(video), "--out", str(out), "--json", str(json_path), "--npz", str(npz_path)]
    assert main(argv + ["--top-k", "100"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(set(np.load(npz_path)["frame"].tolist())) == [0, 1, 2]
    assert sorted(set(json.loads(json_path.read_text())["frame"])) == [0, 1, 2]
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == 3


def test_open_frames_video_and_folder_agree(tmp_path, frames):
    folder = _folder(tmp_path, frames[:3])
    source = open_frames(folder)
    assert source.size_wh == (WIDTH, HEIGHT) and source.count == 3
    np.testing.assert_array_equal(list(source)[1], frames[1])
    video = open_frames(_video(tmp_path, frames[:3]))
    assert video.size_wh == (WIDTH, HEIGHT) and len(list(video)) == 3


def test_benchmark_metrics_known_answer():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "track_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "track.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tracker = Tracker(geometry="none")
    shift = np.array([[1.0, 0, 4.0], [0, 1.0, 0.0], [0, 0, 1.0]])  # the scene moves 4 px right per frame
    homographies = [np.linalg.matrix_power(shift, t) for t in range(3)]
    start = np.array([[10.0, 10.0], [50.0, 20.0]])
    results = []
    for t, error in enumerate([0.0, 0.5, 2.0]):  # track 0 exact; track 1 off by 0.5 then 2 px
        points = start + [4.0 * t, 0.0]
        points[1, 1] += error
        pairs = np.zeros((0, 2)) if t == 0 else np.array([[0, 0], [1, 1]])
        result = tracker.link(t, points, np.ones(2), pairs, (100, 100))
        result.seconds = 0.5
        results.append(result)
    metrics = bench.track_metrics(results, homographies)
    assert metrics["tracks"] == 2 and metrics["mean_length"] == 3.0
    assert metrics["within_1px"] == 0.5 and metrics["within_3px"] == 1.0
    assert metrics["fps"] == 2.0 and metrics["tracks_100"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": "3"}, "threshold must be a finite number > 0 (pixels), got '3'"),  # was np's TypeError
        ({"threshold": None}, "threshold must be a finite number > 0 (pixels), got None"),
        ({"threshold": 0}, "threshold must be a finite number > 0 (pixels), got 0"),
        ({"memory": -1}, "memory must be an integer >= 0, got -1"),
        ({"memory": 1.5}, "memory must be an integer >= 0, got 1.5"),
    ],
)
def test_tracker_options_are_checked_as_the_rest_of_the_api(options, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Tracker(**options)


def test_tracker_takes_numpy_integers():
    """Counts read from numpy (``np.int64``) were refused as 'not an integer'."""
    assert Tracker(memory=np.int64(3), threshold=np.float32(2.0)).memory == 3


def test_cli_bad_search_radius(tmp_path, frames, capsys):
    video = _video(tmp_path, frames[:2])
    argv = ["track", str(video), "--npz", str(tmp_path / "t.npz"), "--search-radius", "0"]
    _fails(capsys, argv, "--search-radius must be a finite number > 0")
    assert not (tmp_path / "t.npz").exists()


def test_guided_tracker_refuses_bad_options():
    with pytest.raises(ConfigError, match="search_radius must be"):
        GuidedTracker(search_radius=float("nan"))
    with pytest.raises(ConfigError, match="max_distance must be"):
        GuidedTracker(max_distance=0)
