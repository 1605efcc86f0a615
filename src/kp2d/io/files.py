"""Files written whole or not at all: a temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import functools
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save"]


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """Permissions of a newly created file under this process's umask.

    Read once: reading the umask means setting it, for the whole process.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    The object is serialised in memory first, so that a full disk is an ``OSError`` of the write (PyTorch's
    own file writer reports it as a RuntimeError), and ``path`` is only ever replaced by a whole file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _file_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
