"""Errors meant for the user: the CLI prints their message on one line and exits 2, without a traceback.

Every kp2d error subclasses :class:`Kp2dError` and the built-in exception a Python caller would expect,
so ``except ValueError`` and ``except kp2d.errors.Kp2dError`` both work (table: ``docs/errors.md``)::

    Kp2dError(Exception)
    ├── ConfigError(ValueError)          invalid configuration, option or YAML file
    ├── DataError(ValueError)            unreadable, truncated or malformed image / dataset
    │   └── ImageNotFoundError(FileNotFoundError)   an image file that does not exist
    ├── CheckpointError(ValueError)      a file that is not a usable checkpoint (bad content)
    ├── InputError(ValueError)           a public-API argument of the wrong shape or value
    ├── InputTypeError(TypeError)        a public-API argument of the wrong type (None, a str, ...)
    └── RunFolderInUse(OSError)          a training run folder held by another live kp2d run
"""

from __future__ import annotations

import os

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ImageNotFoundError",
    "InputError",
    "InputTypeError",
    "Kp2dError",
    "RunFolderInUse",
    "make_folder",
    "user_message",
]


class Kp2dError(Exception):
    """A user-facing error (bad input file, bad option, corrupt checkpoint, ...)."""


class ConfigError(Kp2dError, ValueError):
    """A configuration is invalid (unknown key, wrong type, unknown preset)."""


class CheckpointError(Kp2dError, ValueError):
    """A file is not a usable KeyPointNet checkpoint."""


class DataError(Kp2dError, ValueError):
    """An input image or dataset is missing, unreadable or malformed."""


class ImageNotFoundError(DataError, FileNotFoundError):
    """An image file does not exist (``except FileNotFoundError`` catches it too)."""


class InputError(Kp2dError, ValueError):
    """A public-API argument has the wrong shape or value (keypoints not ``(N, 2)``, sizes that differ)."""


class InputTypeError(Kp2dError, TypeError):
    """A public-API argument has the wrong type (``None`` or a string where a tensor is expected)."""


class RunFolderInUse(Kp2dError, OSError):
    """Another live kp2d run holds the run folder (its lock, :mod:`kp2d.train.run_folder`)."""


def user_message(err: BaseException) -> str:
    """The error's message on one line; for an error raised in a DataLoader worker, the original message.

    PyTorch re-raises a worker's exception in the main process as the same type, but with the worker's
    whole traceback as its message (``Caught DataError in DataLoader worker process 0. Original
    Traceback ... kp2d.errors.DataError: <message>``); the user wants the last part only. Messages that
    quote a library's multi-line text are joined into one line. An ``OSError`` about a file reads
    ``No such file or directory: out/x.png`` rather than ``[Errno 2] No such file or directory: '...'``.
    """
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        names = [str(name) for name in (err.filename, err.filename2) if name is not None]
        return f"{err.strerror}: {' -> '.join(names)}"
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
        start = text.rfind(marker)
        if start >= 0:
            text = text[start + len(marker) :]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def make_folder(folder: str | os.PathLike, what: str = "folder") -> None:
    """``mkdir -p folder``; a failure is a :class:`DataError` naming it (``cannot create the <what> ...``)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the {what} {folder}: {err.strerror or err}") from None
