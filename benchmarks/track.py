"""Tracking against known truth: kp2d, OpenCV ORB and pyramidal Lucas–Kanade through one tracking code path.

A photo (scikit-image's astronaut, enlarged to 900x900) is filmed at 640x480 by a camera following a smooth
sequence of homographies ``H_t`` (pan, zoom in, rotation, mild perspective); a point at ``p`` in frame
``t0`` is at ``H_t H_t0^-1 p`` in frame ``t``, so every track's truth is known. Every method goes through
:class:`kp2d.tracking.Tracker` (same RANSAC homography check, same id logic):

* kp2d: :func:`kp2d.track`, guided (its default: tracks continued through every cell of the network's
  output near their predicted position) or, for the ``-topk`` methods, mutual nearest neighbours on the
  top-k keypoints' descriptors only;
* ORB: ``cv2.ORB`` keypoints, binary descriptors as 0/1 vectors, the same mutual nearest neighbours;
* LK: Shi–Tomasi corners (``goodFeaturesToTrack``) moved by ``calcOpticalFlowPyrLK``, new corners
  detected away from live tracks each frame to replace the lost ones; flow gives the matches.

Reported per method: mean track length (frames), the share of tracks (of 2+ frames) whose every position
stays within 1 / 3 px of the truth, the drift after 100 frames (median error of tracks alive 100 frames at
their 100th frame), and frames per second (tracking only: features, matching, check; no drawing).

    python benchmarks/track.py                       # synthetic video, all methods
    python benchmarks/track.py --methods kp2d-fused,kp2d-fused-topk,orb,lk --frames 60
    python benchmarks/track.py --real /tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data --frames 60
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator

import cv2
import numpy as np
import torch

from kp2d.tracking import TrackedFrame, Tracker, track

SIZE = (640, 480)
#: method name -> (backend, scale_factor, guided) for kp2d; "-topk": tracks through the top-k keypoints only
KP2D_METHODS = {
    "kp2d": ("torch-fp32", 1.0, True),
    "kp2d-fused": ("torch-fused", 1.0, True),
    "kp2d-fused-0.5": ("torch-fused", 0.5, True),
    "kp2d-topk": ("torch-fp32", 1.0, False),
    "kp2d-fused-topk": ("torch-fused", 1.0, False),
    "kp2d-fused-0.5-topk": ("torch-fused", 0.5, False),
}
REAL_VIDEOS = ("vtest.avi", "tree.avi", "Megamind.avi")


def camera(t: float) -> np.ndarray:
    """World (900x900 photo) → frame homography at time ``t`` in [0, 1]: smooth pan, zoom, roll, tilt."""
    center = np.array([380.0 + 140.0 * t, 400.0 + 100.0 * math.sin(math.pi * t)])
    scale = 1.0 + 0.2 * t
    angle = math.radians(8.0 * math.sin(2.0 * math.pi * t))
    tilt = 1.5e-4 * math.sin(math.pi * t)
    to_origin = np.array([[1, 0, -center[0]], [0, 1, -center[1]], [0, 0, 1.0]])
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
    zoom = np.diag([scale, scale, 1.0])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt, 0.5 * tilt, 1.0]])
    to_frame = np.array([[1, 0, SIZE[0] / 2], [0, 1, SIZE[1] / 2], [0, 0, 1.0]])
    return to_frame @ perspective @ zoom @ rotate @ to_origin


def synthetic_video(frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB frames ``(480, 640, 3)`` and their homographies from the world."""
    from skimage import data

    world = cv2.resize(data.astronaut(), (900, 900), interpolation=cv2.INTER_CUBIC)
    homographies = [camera(t / max(frames - 1, 1)) for t in range(frames)]
    images = [cv2.warpPerspective(world, h, SIZE, flags=cv2.INTER_LINEAR) for h in homographies]
    return images, homographies


def orb_frames(images: list[np.ndarray], top_k: int) -> Iterator[TrackedFrame]:
    """ORB keypoints and descriptors through :class:`Tracker` (same matching and check as kp2d)."""
    orb = cv2.ORB_create(nfeatures=top_k)
    tracker = Tracker("homography", 3.0)
    for index, image in enumerate(images):
        start = time.perf_counter()
        points, desc = orb.detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
        xy = np.array([p.pt for p in points], dtype=np.float32).reshape(-1, 2)
        scores = np.array([p.response for p in points], dtype=np.float32)
        bits = np.unpackbits(desc, axis=1) if desc is not None else np.zeros((0, 256), np.uint8)
        result = tracker.step(index, xy, scores, torch.from_numpy(bits.astype(np.float32)), SIZE)
        result.seconds = time.perf_counter() - start
        yield result


def lk_frames(images: list[np.ndarray], top_k: int) -> Iterator[TrackedFrame]:
    """Shi–Tomasi corners moved by pyramidal LK, lost ones replaced by new corners, through a Tracker."""
    tracker = Tracker("homography", 3.0)
    previous_gray, points = None, np.zeros((0, 2), np.float32)
    for index, image in enumerate(images):
        start = time.perf_counter()
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        flowed, matches = np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int64)
        if previous_gray is not None and len(points):
            moved, status, _ = cv2.calcOpticalFlowPyrLK(
                previous_gray, gray, points.reshape(-1, 1, 2), None, winSize=(21, 21), maxLevel=3
            )
            moved = moved.reshape(-1, 2)
            inside = (moved >= 0).all(1) & (moved[:, 0] < SIZE[0] - 1) & (moved[:, 1] < SIZE[1] - 1)
            ok = np.flatnonzero(status.ravel().astype(bool) & inside)
            flowed = moved[ok]
            matches = np.stack([ok, np.arange(len(ok))], 1)
        mask = np.full(gray.shape, 255, np.uint8)
        for x, y in flowed:  # no new corner on a live track
            cv2.circle(mask, (int(x), int(y)), 7, 0, -1)
        wanted = top_k - len(flowed)
        new = np.zeros((0, 2), np.float32)
        if wanted > 0:
            corners = cv2.goodFeaturesToTrack(gray, wanted, 0.01, 7, mask=mask)
            if corners is not None:
                new = corners.reshape(-1, 2).astype(np.float32)
        keypoints = np.concatenate([flowed, new])
        result = tracker.link(index, keypoints, np.ones(len(keypoints), np.float32), matches, SIZE)
        # a flowed point that failed the check is dropped, not restarted where the flow left it
        keep = ~(result.is_new & (np.arange(len(keypoints)) < len(flowed)))
        tracker.keep(keep)
        points, previous_gray = keypoints[keep], gray
        for field in ("keypoints", "scores", "track_ids", "is_new", "previous"):
            setattr(result, field, getattr(result, field)[keep])
        result.seconds = time.perf_counter() - start
        yield result


def track_metrics(results: list[TrackedFrame], homographies: list[np.ndarray] | None) -> dict:
    """Mean track length, shares within 1 / 3 px of the truth, drift after 100 frames, fps, inlier share."""
    ids = np.concatenate([r.track_ids for r in results])
    frame = np.concatenate([np.full(len(r), r.index) for r in results])
    xy = np.concatenate([r.keypoints for r in results]).astype(np.float64)
    lengths = np.unique(ids, return_counts=True)[1]
    seconds = sum(r.seconds for r in results)
    matches = sum(r.num_matches for r in results)
    metrics = {
        "frames": len(results),
        "tracks": int(len(lengths)),
        "mean_length": float(lengths.mean()),
        "mean_length_2plus": float(lengths[lengths >= 2].mean()) if (lengths >= 2).any() else 0.0,
        "fps": len(results) / seconds,
        "inlier_share": sum(r.num_inliers for r in results) / matches if matches else float("nan"),
    }
    if homographies is None:
        return metrics
    order = np.lexsort((frame, ids))
    ids, frame, xy = ids[order], frame[order], xy[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ids)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    stack = np.stack(homographies)
    # truth: H_t H_t0^-1 p_t0 for every row, batched
    relative = stack[frame] @ np.linalg.inv(stack[frame[first]])
    origin = np.c_[xy[first], np.ones(len(xy))]
    mapped = np.einsum("nij,nj->ni", relative, origin)
    error = np.linalg.norm(mapped[:, :2] / mapped[:, 2:] - xy, axis=1)
    worst = np.maximum.reduceat(error, starts)
    long_enough = np.diff(np.r_[starts, len(ids)]) >= 2
    age = frame - frame[first]
    drift = error[age == 100]
    metrics.update(
        within_1px=float((worst[long_enough] <= 1.0).mean()),
        within_3px=float((worst[long_enough] <= 3.0).mean()),
        drift_100=float(np.median(drift)) if len(drift) else float("nan"),
        tracks_100=int(len(drift)),
    )
    return metrics


def run_method(name: str, images: list[np.ndarray], top_k: int, model) -> tuple[list[TrackedFrame], float]:
    """The method's tracked frames and the CPU seconds (all threads) per frame."""
    if name in ("orb", "lk"):
        start = time.process_time()
        results = list((orb_frames if name == "orb" else lk_frames)(images, top_k))
        return results, (time.process_time() - start) / len(images)
    backend_name, scale, guided = KP2D_METHODS[name]
    from kp2d.deploy.backends import load_backend

    backend = None if backend_name == "torch-fp32" else load_backend(backend_name, model)
    options = {"model": model, "backend": backend, "top_k": top_k, "scale_factor": scale, "guided": guided}
    list(track(images[:1], **options))  # warm-up
    start = time.process_time()
    results = list(track(images, **options))
    return results, (time.process_time() - start) / len(images)


def _measure(name: str, images, top_k: int, model, homographies) -> dict:
    results, cpu_seconds = run_method(name, images, top_k, model)
    metrics = track_metrics(results, homographies)
    metrics["cpu_seconds_per_frame"] = cpu_seconds
    return metrics


def _row(name: str, m: dict) -> str:
    cells = [name, f"{m['mean_length']:.1f}", f"{m['mean_length_2plus']:.1f}"]
    if "within_1px" in m:
        cells += [f"{100 * m['within_1px']:.1f}%", f"{100 * m['within_3px']:.1f}%",
                  "n/a" if math.isnan(m["drift_100"]) else f"{m['drift_100']:.2f} ({m['tracks_100']})"]
    cells += [f"{100 * m['inlier_share']:.1f}%", f"{m['fps']:.2f}", f"{m['cpu_seconds_per_frame']:.3f}"]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="kp2d,kp2d-fused,kp2d-fused-0.5,orb,lk", help="comma-separated")
    parser.add_argument("--frames", type=int, default=150, help="frames of the video (default: 150)")
    parser.add_argument("--top-k", type=int, default=1000, help="keypoints per frame (default: 1000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--real", metavar="DIR", help="instead: OpenCV's sample videos in DIR (no truth)")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from kp2d.models import KeyPointNet

    model = KeyPointNet.from_pretrained("v4")
    methods = args.methods.split(",")
    results = {}
    if args.real:
        from pathlib import Path

        from kp2d.video import open_frames

        print("| video | method | mean length | mean length (2+) | inliers | fps | CPU s/frame |")
        print("|---|---|---|---|---|---|---|")
        for video in REAL_VIDEOS:
            source = open_frames(Path(args.real) / video)
            images = [f for _, f in zip(range(args.frames), source, strict=False) if f is not None]
            global SIZE
            SIZE = source.size_wh
            for name in methods:
                metrics = _measure(name, images, args.top_k, model, None)
                results[f"{video}/{name}"] = metrics
                print(f"| {video} {SIZE[0]}x{SIZE[1]} " + _row(name, metrics), flush=True)
            source.close()
    else:
        images, homographies = synthetic_video(args.frames)
        print(f"synthetic video: {args.frames} frames at {SIZE[0]}x{SIZE[1]}, top {args.top_k}")
        print("| method | mean length | mean length (2+) | within 1 px | within 3 px | drift @100 (tracks) "
              "| inliers | fps | CPU s/frame |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in methods:
            metrics = _measure(name, images, args.top_k, model, homographies)
            results[name] = metrics
            print(_row(name, metrics), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
