"""Video in and out for tracking: frames from a video file or a folder, the annotated video, the track table.

* :func:`open_frames` reads anything OpenCV's ``VideoCapture`` reads (mp4, avi, ...) or a folder of frames
  in natural name order (``f2.png`` before ``f10.png``), as RGB uint8 arrays; an unreadable frame comes out
  as ``None`` (with a warning) so :func:`kp2d.track` skips it and keeps ids consistent.
* :class:`TrackDrawer` draws tracks as fading trails (continued tracks green, new ones red) with the frame
  rate and the number of live tracks in the top-left corner.
* :class:`VideoOutput` writes frames to ``.mp4`` (``mp4v``) or ``.avi`` (``MJPG``) through a temporary file
  renamed on :meth:`~VideoOutput.close`, so the file is always a complete video.
* :class:`TrackTable` collects ``id, frame, x, y, score`` columns for ``.npz`` / JSON.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from kp2d.errors import ConfigError, DataError
from kp2d.tracking import TrackedFrame

__all__ = [
    "VIDEO_FOURCC",
    "FrameSource",
    "TrackDrawer",
    "TrackTable",
    "VideoOutput",
    "natural_key",
    "open_frames",
]

log = logging.getLogger(__name__)

#: Output video extensions and their codec.
VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
_MAX_BAD_READS = 8  # consecutive failed reads of a video that end it even if its header promises more


def natural_key(name: str) -> list:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compare as numbers, text ignoring case)."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", name)]


class FrameSource:
    """Frames of a video file or a folder, iterated once as RGB ``(H, W, 3)`` uint8 arrays or ``None``.

    Attributes:
        path: the video or folder.
        fps: frames per second of the video (25 for a folder of frames or an unknown rate).
        size_wh: ``(W, H)`` of the first frame.
        count: number of frames (a video's header count: may be approximate).
    """

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int], count: int) -> None:
        self.path, self.fps, self.size_wh, self.count = path, fps, size_wh, count
        self._capture: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None
        self._files: list[Path] = []

    def __iter__(self) -> Iterator[np.ndarray | None]:
        if self._capture is not None:
            yield from self._video_frames()
        else:
            yield from self._folder_frames()

    def _video_frames(self) -> Iterator[np.ndarray | None]:
        capture, first = self._capture, self._first
        self._first = None
        if first is None:
            return
        yield first
        index, bad = 1, 0
        while True:
            ok, frame = capture.read()
            if ok and frame is not None:
                bad = 0
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            elif index < self.count - 1 and bad < _MAX_BAD_READS:
                bad += 1  # a damaged frame in the middle: the decoder may resume at the next one
                log.warning("%s: frame %d cannot be decoded; skipped", self.path, index)
                yield None
            else:
                return
            index += 1

    def _folder_frames(self) -> Iterator[np.ndarray | None]:
        from kp2d.io.images import load_image

        for path in self._files:
            try:
                yield load_image(path)
            except DataError:
                log.warning("%s cannot be read as an image; skipped", path)
                yield None

    def close(self) -> None:
        """Release the video file."""
        if self._capture is not None:
            self._capture.release()


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(W, H)`` from the file's header, ``None`` when it cannot be opened as an image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _open_folder(folder: Path) -> FrameSource:
    from kp2d.data.image_folder import IMAGE_EXTENSIONS

    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
         and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise DataError(f"{folder}: no frames (no {', '.join(IMAGE_EXTENSIONS)} files in the folder)")
    sizes = [_image_size(path) for path in files]  # headers only: a size change is refused before tracking
    readable = [(path, size) for path, size in zip(files, sizes, strict=True) if size is not None]
    if not readable:
        raise DataError(f"{folder}: none of its {len(files)} image files can be read")
    first_path, first_size = readable[0]
    for path, size in readable:
        if size != first_size:
            raise DataError(
                f"{path.name} is {size[0]}x{size[1]}, {first_path.name} is {first_size[0]}x{first_size[1]}: "
                "tracking needs frames of one size (resize the folder first)"
            )
    source = FrameSource(folder, 25.0, first_size, len(files))
    source._files = files
    return source


def open_frames(path: str | os.PathLike) -> FrameSource:
    """A :class:`FrameSource` for a video file or a folder of frames.

    Raises:
        DataError: missing path, a file OpenCV cannot read as a video, a video or folder without frames, or
            a folder whose frames differ in size.
    """
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    if not path.is_file():
        raise DataError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: not a video that OpenCV can read")
    ok, first = capture.read()
    if not ok or first is None:
        capture.release()
        raise DataError(f"{path}: the video has no frames")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if np.isfinite(fps) and 0 < fps < 1000 else 25.0
    count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
    source = FrameSource(path, fps, (first.shape[1], first.shape[0]), count)
    source._capture, source._first = capture, cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
    return source


def check_video_path(path: Path) -> None:
    """ConfigError unless ``path`` ends in a supported video extension (``.mp4``, ``.avi``)."""
    if path.suffix.lower() not in VIDEO_FOURCC:
        found = f"'{path.suffix}'" if path.suffix else "none"
        raise ConfigError(f"--out {path}: unsupported video extension ({found}); use .mp4 or .avi")


class VideoOutput:
    """An ``.mp4`` / ``.avi`` written through ``<name>.partial<suffix>`` and renamed by :meth:`close`."""

    def __init__(self, path: str | os.PathLike, fps: float, size_wh: tuple[int, int]) -> None:
        self.path = Path(path)
        check_video_path(self.path)
        self.partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[self.path.suffix.lower()])
        width, height = (int(side) for side in size_wh)
        self._writer = cv2.VideoWriter(str(self.partial), fourcc, float(fps), (width, height))
        if not self._writer.isOpened():
            self.partial.unlink(missing_ok=True)
            raise DataError(f"cannot write the video {self.path} (OpenCV's writer did not open)")
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        """Append an RGB ``(H, W, 3)`` uint8 frame of the video's size."""
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it to ``path`` (a video without frames is removed instead)."""
        self._writer.release()
        if self.frames:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)


class TrackDrawer:
    """Draws tracks: trails of the last ``trail`` frames fading with age, continued points green, new red.

    Keeps each live track's recent positions ``(N, trail, 2)`` (NaN where the track is younger), carried
    from frame to frame through :attr:`TrackedFrame.previous`.
    """

    TRAIL_COLOR = np.array([255.0, 210.0, 0.0])  # RGB
    KEPT_COLOR = (40, 220, 60)
    NEW_COLOR = (235, 50, 40)

    def __init__(self, trail: int = 12) -> None:
        self.trail = max(int(trail), 2)
        self._history = np.zeros((0, self.trail, 2), dtype=np.float32)

    def update(self, frame: TrackedFrame) -> None:
        """Advance the trails to ``frame``."""
        history = np.full((len(frame), self.trail, 2), np.nan, dtype=np.float32)
        history[:, 0] = frame.keypoints
        kept = frame.previous >= 0
        history[kept, 1:] = self._history[frame.previous[kept], :-1]
        self._history = history

    def draw(self, image: np.ndarray, frame: TrackedFrame, fps: float | None = None) -> np.ndarray:
        """``image`` (RGB) with ``frame``'s tracks and a caption; call :meth:`update` with ``frame`` first."""
        from kp2d.visualization import to_rgb_uint8

        canvas = to_rgb_uint8(image).copy()
        shift = 4
        points = np.round(self._history * (1 << shift))
        for age in range(self.trail - 1):
            both = np.isfinite(points[:, age]).all(1) & np.isfinite(points[:, age + 1]).all(1)
            if both.any():
                segments = points[both][:, age: age + 2].astype(np.int32)
                fade = 1.0 - age / (self.trail - 1)
                color = tuple(float(c) for c in self.TRAIL_COLOR * fade)
                cv2.polylines(canvas, list(segments), False, color, 1, cv2.LINE_AA, shift)
        for is_new, color in ((False, self.KEPT_COLOR), (True, self.NEW_COLOR)):
            dots = points[frame.is_new == is_new, 0].astype(np.int32)[:, None]
            if len(dots):
                cv2.polylines(canvas, list(dots), False, color, 4, cv2.LINE_AA, shift)
        rate = "" if fps is None else f"{fps:.1f} fps  "
        text = f"{rate}{len(frame)} tracks ({int(frame.is_new.sum())} new)  frame {frame.index}"
        from kp2d.visualization import draw_caption

        return draw_caption(canvas, text)


class TrackTable:
    """Every tracked keypoint as one row of columns ``id, frame, x, y, score`` (in processing order)."""

    COLUMNS = ("id", "frame", "x", "y", "score")

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, frame: TrackedFrame) -> None:
        """Append ``frame``'s rows."""
        self._parts.append(
            (
                frame.track_ids,
                np.full(len(frame), frame.index, dtype=np.int64),
                frame.keypoints[:, 0].astype(np.float32),
                frame.keypoints[:, 1].astype(np.float32),
                frame.scores.astype(np.float32),
            )
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """``id`` int64, ``frame`` int64, ``x``, ``y``, ``score`` float32, each ``(R,)``."""
        dtypes = (np.int64, np.int64, np.float32, np.float32, np.float32)
        return {
            name: np.concatenate([part[i] for part in self._parts]).astype(dtype)
            if self._parts else np.zeros(0, dtype=dtype)
            for i, (name, dtype) in enumerate(zip(self.COLUMNS, dtypes, strict=True))
        }
