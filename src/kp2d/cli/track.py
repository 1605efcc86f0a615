"""``kp2d track VIDEO|FOLDER``: keypoint tracks through a video, an annotated video and a table of tracks.

Reads a video file (anything OpenCV reads) or a folder of frames (natural name order), tracks keypoints
with :func:`kp2d.track` and writes ``--out`` (the video with fading trails, new tracks in red, frame rate
and live tracks in a corner), ``--json`` / ``--npz`` (columns ``id, frame, x, y, score``, see
:func:`track_record`). Prints the frame rate at the end. Ctrl-C stops and still writes complete outputs
of the frames done (exit 130).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kp2d.cli.detect import add_model_options

__all__ = ["add_parser", "run", "track_record"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kp2d track``."""
    parser = subparsers.add_parser(
        "track",
        help="track keypoints through a video or a folder of frames",
        description="Track keypoints through a video (mutual nearest neighbours frame to frame, checked by a "
        "robust homography or fundamental matrix); write an annotated video and a table of tracks.",
    )
    parser.add_argument("video", metavar="VIDEO|FOLDER", help="a video file or a folder of frames")
    parser.add_argument(
        "--out", default=None, metavar="VIDEO", help="annotated video to write, .mp4 (mp4v) or .avi (MJPG)"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the tracks as JSON columns")
    parser.add_argument("--npz", default=None, metavar="FILE", help="write the tracks as a numpy .npz")
    parser.add_argument(
        "--every", type=int, default=1, metavar="N", help="track every N-th frame (default: 1)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, metavar="N", help="read at most N frames of the input"
    )
    parser.add_argument(
        "--geometry",
        choices=("homography", "fundamental", "none"),
        default="homography",
        help="robust check of the matches: homography (camera panning / static, planar or distant scene), "
        "fundamental (moving camera in a 3-D scene), none (default: homography)",
    )
    parser.add_argument(
        "--threshold", type=float, default=3.0, help="inlier threshold of the check in pixels (default: 3)"
    )
    parser.add_argument(
        "--memory", type=int, default=5, metavar="N",
        help="resume a track lost for up to N frames when its keypoint is found again (homography only; "
        "default: 5, 0 for off)",
    )
    parser.add_argument(
        "--no-guided", dest="guided", action="store_false",
        help="continue tracks through the top-k keypoints only, not through every cell of the network's "
        "output near their predicted position (guided is the default, homography only)",
    )
    parser.add_argument(
        "--search-radius", type=float, default=2.0, metavar="PX",
        help="guided: pixels around a track's predicted position searched for it (default: 2)",
    )
    parser.add_argument(
        "--trail", type=int, default=12, metavar="N", help="frames of trail drawn per track (default: 12)"
    )
    add_model_options(parser, extra_scales=False)
    parser.set_defaults(func=run)


def track_record(table: dict, source_path: str, fps: float, size_wh: tuple[int, int], args) -> dict:
    """What ``--json`` writes.

    ``video``, ``fps`` (of the input), ``image_size`` ``[W, H]``, ``every``, ``geometry``, and the columns
    ``id``, ``frame``, ``x``, ``y``, ``score`` (lists of equal length, one entry per tracked keypoint per
    frame); ``--npz`` holds the same columns as arrays.
    """
    record = {
        "video": source_path,
        "fps": fps,
        "image_size": [int(size_wh[0]), int(size_wh[1])],
        "every": args.every,
        "geometry": args.geometry,
    }
    record["id"] = table["id"].tolist()
    record["frame"] = table["frame"].tolist()
    for name in ("x", "y"):
        record[name] = [round(v, 3) for v in table[name].astype(float).tolist()]
    record["score"] = [round(v, 5) for v in table["score"].astype(float).tolist()]
    return record


def _check_options(args: argparse.Namespace) -> None:
    from kp2d.checks import check_finite, check_integer, check_output_path
    from kp2d.errors import ConfigError

    check_integer("--every", args.every)
    if args.max_frames is not None:
        check_integer("--max-frames", args.max_frames)
    check_finite("--threshold", args.threshold, above=0, unit="pixels")
    check_finite("--search-radius", args.search_radius, above=0, unit="pixels")
    check_integer("--memory", args.memory, minimum=0)
    check_integer("--trail", args.trail, minimum=2)
    if args.out is None and args.json is None and args.npz is None:
        raise ConfigError("nothing to write: give --out VIDEO, --json FILE and/or --npz FILE")
    if args.out is not None:
        from kp2d.video import check_video_path

        check_output_path(Path(args.out), "--out")
        check_video_path(Path(args.out))
    for option, value in (("--json", args.json), ("--npz", args.npz)):
        if value is not None:
            check_output_path(Path(value), option)
    if args.npz is not None and Path(args.npz).suffix.lower() != ".npz":
        raise ConfigError(f"--npz {args.npz}: the file name must end in .npz")


def _write_npz(path: Path, arrays: dict) -> None:
    """``np.savez`` through a temporary file renamed over ``path`` (never half written)."""
    import numpy as np

    partial = path.with_name(path.name + ".partial.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, **arrays)
        partial.replace(path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None


def run(args: argparse.Namespace) -> int:
    """Track, write the outputs, print the frame rate; returns the exit status (130 after Ctrl-C)."""
    import sys

    import numpy as np
    from tqdm import tqdm

    from kp2d.cli.detect import apply_model_settings, model_backend, selection_options
    from kp2d.models.keypoint_net import load_keypoint_net
    from kp2d.runtime import resolve_device
    from kp2d.tracking import track
    from kp2d.video import TrackDrawer, TrackTable, VideoOutput, open_frames

    options = selection_options(args)
    _check_options(args)
    source = open_frames(args.video)
    model = load_keypoint_net(args.model, resolve_device(args.device))
    apply_model_settings(args, model)
    backend = model_backend(args, model)
    total = -(-source.count // args.every)
    if args.max_frames is not None:
        total = min(total, -(-args.max_frames // args.every))

    video = None
    if args.out is not None:
        video = VideoOutput(args.out, source.fps / args.every, source.size_wh)
    drawer, table = TrackDrawer(args.trail), TrackTable()
    frames = track(
        source, model, backend if backend is not None else "torch-fp32", options["top_k"],
        geometry=args.geometry, threshold=args.threshold,
        memory=args.memory, guided=args.guided, search_radius=args.search_radius,
        every=args.every, max_frames=args.max_frames, scale_factor=options["scale_factor"],
        score_threshold=options["score_threshold"], nms_radius=options["nms_radius"],
    )
    done = matches = inliers = 0
    track_seconds = 0.0
    interrupted = False
    start = time.perf_counter()
    progress = tqdm(total=total, desc="track", unit="frame", disable=None)
    try:
        for frame in frames:
            done += 1
            matches, inliers = matches + frame.num_matches, inliers + frame.num_inliers
            track_seconds += frame.seconds
            table.add(frame)
            if video is not None:
                drawer.update(frame)
                video.write(drawer.draw(frame.image, frame, done / (time.perf_counter() - start)))
            progress.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        source.close()
        if video is not None:
            video.close()
        elapsed = time.perf_counter() - start
        arrays = table.arrays()
        if args.npz is not None:
            _write_npz(Path(args.npz), arrays)
        if args.json is not None:
            from kp2d.io.files import write_json

            record = track_record(arrays, str(args.video), source.fps, source.size_wh, args)
            write_json(Path(args.json), record)

    lengths = np.bincount(arrays["id"]) if len(arrays["id"]) else np.zeros(0, dtype=np.int64)
    mean_length = float(lengths.mean()) if len(lengths) else 0.0
    share = f" ({100.0 * inliers / matches:.1f}% of {matches} matches)" if matches else ""
    print(f"frames: {done} tracked from {args.video}" + (" (interrupted)" if interrupted else ""))
    print(f"tracks: {len(lengths)}, mean length {mean_length:.1f} frames; inliers {inliers}{share}")
    if done:
        print(f"fps: {done / elapsed:.2f} overall, {done / max(track_seconds, 1e-9):.2f} tracking only")
    written = video is not None and video.frames and args.out
    for name, value in (("video", written), ("json", args.json), ("npz", args.npz)):
        if value:
            print(f"{name}: {value}")
    if interrupted:
        print("kp2d track: interrupted; outputs hold the frames done", file=sys.stderr)
        return 130
    return 0
