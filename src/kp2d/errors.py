"""Errors meant for the user: the CLI prints their message and exits non-zero, without a traceback."""

from __future__ import annotations

import os

__all__ = ["CheckpointError", "ConfigError", "DataError", "Kp2dError", "make_folder", "user_message"]


class Kp2dError(Exception):
    """A user-facing error (bad input file, bad option, corrupt checkpoint, ...)."""


class ConfigError(Kp2dError, ValueError):
    """A configuration is invalid (unknown key, wrong type, unknown preset)."""


class CheckpointError(Kp2dError):
    """A file is not a usable KeyPointNet checkpoint."""


class DataError(Kp2dError):
    """An input image or dataset is missing, unreadable or malformed."""


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
