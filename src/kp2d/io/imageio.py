"""Reading image files: the one function every kp2d reader (detect, match, train, eval, the API) goes through.

:func:`read_image_rgb` checks JPEG and PNG files for truncation and damage *before* decoding: OpenCV's
decoders either return a partial image (``cv2.imread`` on a JPEG cut in half) or print their library's own
line on stderr (``libpng error: ...``, ``Premature end of JPEG file``) beside kp2d's message. A file that
fails the check, or that OpenCV cannot decode, raises the same :class:`~kp2d.errors.DataError` naming it.
What the libraries still print while decoding (damaged data in a complete file) is captured: quoted in the
error when decoding fails, logged at debug level when it succeeds (``Corrupt JPEG data: ...`` warnings).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kp2d.errors import DataError, ImageNotFoundError

__all__ = ["check_image_bytes", "read_image_rgb"]

log = logging.getLogger(__name__)

_JPEG_START = b"\xff\xd8\xff"
_JPEG_SCAN = b"\xff\xda"  # start of scan: the entropy-coded data follows
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_problem(data: bytes) -> str | None:
    """Why the PNG bytes are unusable (a chunk cut short, a CRC mismatch, no IEND chunk), or ``None``."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            return f"truncated PNG file: the {kind.decode('latin-1')} chunk is cut short"
        crc = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[offset + 4 : end - 4]) != crc:
            return f"corrupt PNG file: CRC mismatch in the {kind.decode('latin-1')} chunk"
        if kind == b"IEND":
            return None
        offset = end
    return "truncated PNG file: no IEND chunk"


def _jpeg_problem(data: bytes) -> str | None:
    """Why the JPEG bytes are unusable (no image data, no end-of-image marker after it), or ``None``.

    Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so an
    end-of-image marker after the first start-of-scan is the image's own, not a byte pattern in the data.
    """
    scan = data.find(_JPEG_SCAN, 2)
    if scan < 0:
        return "truncated JPEG file: no image data"
    if data.find(_JPEG_END, scan + 2) < 0:
        return "truncated JPEG file: no end-of-image marker"
    return None


# Lines libpng, libjpeg and OpenCV write to the process's stderr themselves while decoding
_LIBRARY_LINE = re.compile(
    rb"^(libpng |Premature end of JPEG|Corrupt JPEG|Invalid JPEG|Bogus |Unsupported |Not a JPEG|"
    rb"Warning: |\[ ?(WARN|ERROR|INFO|DEBUG):)"
)
_STDERR_LOCK = threading.Lock()  # the stderr file descriptor is the process's: one capture at a time


@contextlib.contextmanager
def _library_stderr(lines: list[str]) -> Iterator[None]:
    """Capture what C libraries write to file descriptor 2 meanwhile; their lines are appended to ``lines``.

    Other lines (another thread's log output in the same moment) are written back to stderr afterwards.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr: nothing to hide
            yield
            return
        try:
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            other = []
            for line in capture.read().splitlines(keepends=True):
                if _LIBRARY_LINE.match(line):
                    lines.append(line.decode("utf-8", "replace").strip())
                else:
                    other.append(line)
            if other:
                os.write(2, b"".join(other))


def check_image_bytes(data: bytes) -> str | None:
    """Why an encoded JPEG or PNG file is truncated or damaged, or ``None`` (also for other formats)."""
    if data.startswith(_JPEG_START):
        return _jpeg_problem(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_problem(data)
    return None


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as ``(H, W, 3)`` uint8 RGB.

    Grayscale is replicated to 3 channels, an alpha channel is dropped, 16-bit images are scaled to
    8 bit (``round(v / 257)``); EXIF orientation is applied.

    Raises:
        ImageNotFoundError: no such file (a :class:`DataError` and a ``FileNotFoundError``).
        DataError: the file cannot be read, is a truncated or damaged JPEG / PNG, or cannot be decoded;
            the message starts with the path.
    """
    import cv2  # imported here: ``import kp2d`` stays fast

    path = Path(path)
    if not path.is_file():
        raise ImageNotFoundError(f"{path}: image not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err.strerror or err})") from None
    problem = "empty file" if not data else check_image_bytes(data)
    if problem is not None:
        raise DataError(f"{path}: cannot decode image ({problem})")
    messages: list[str] = []
    # libpng and libjpeg print their own lines (e.g. "libpng error: bad adaptive filter value")
    from_library = data.startswith((_JPEG_START, _PNG_SIGNATURE))
    with _library_stderr(messages) if from_library else contextlib.nullcontext():
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        except cv2.error:
            image = None
    if image is None or image.size == 0:
        detail = f": {messages[0]}" if messages else ""
        raise DataError(f"{path}: cannot decode image (corrupt or not an image{detail})")
    if messages:
        log.debug("%s: %s", path, "; ".join(messages))
    if image.dtype == np.uint16:
        image = ((image.astype(np.float32) + 128.5) // 257).astype(np.uint8)  # v / 257 rounded half up
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: cannot decode image (pixel type {image.dtype}; use 8 or 16 bit)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
