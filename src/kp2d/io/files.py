"""Files written whole or not at all: a temporary file in the same folder, fsync, then rename.

:func:`atomic_path` is the one way kp2d replaces a file (checkpoints, JSON results, ONNX graphs).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kp2d.io.checksum import CHECKSUM_KEY, payload_checksum

__all__ = ["atomic_path", "atomic_torch_save", "json_ready", "write_json"]


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """Permissions of a newly created file under this process's umask.

    Read once: reading the umask means setting it, for the whole process.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it is fsynced and renamed over ``path``.

    ``path``'s folder is created. On any error (or Ctrl-C) the temporary file is removed and ``path`` is
    left as it was. The new file gets the usual permissions under the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_path`.

    A dict gets a ``checksum`` entry (:func:`kp2d.io.checksum.payload_checksum`) that
    :func:`kp2d.io.checkpoint.load_checkpoint` checks.

    The object is serialised in memory first, so that a full disk is an ``OSError`` of the write (PyTorch's
    own file writer reports it as a RuntimeError), and ``path`` is only ever replaced by a whole file.
    """
    if isinstance(obj, dict):
        obj = {**obj, CHECKSUM_KEY: payload_checksum(obj)}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (a pair without repeated keypoints) as ``None``, for JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON (non-finite floats as ``null``) at ``path``, through :func:`atomic_path`."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(json_ready(value), indent=2) + "\n")
    except OSError as err:  # named after the file asked for, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
