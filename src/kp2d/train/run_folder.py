"""A run owns its folder: an advisory lock held for the run's lifetime, and clean-up of what killed runs left.

The lock is ``OUT/.lock`` taken with ``fcntl.flock``: the kernel drops it when the process ends however it
ends (``kill -9`` included), so a stale lock cannot exist; the file's text names the holder for the error a
second run prints. Under ``torchrun`` only rank 0 takes it. Windows has no ``flock``: there the lock is not
taken (a second run in the same folder is not detected).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from kp2d.errors import RunFolderInUse

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range locks would also hide the holder's text; no lock there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "RunFolderInUse",
    "close_inherited_locks",
    "hold_run_folder",
    "is_rank_zero",
    "remove_stale_temporary_files",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# folder (resolved) -> [fd, how many nested holds, 1 if the hold created the folder]
_held: dict[Path, list[int]] = {}


def is_rank_zero() -> bool:
    """Whether this process is rank 0 under ``torchrun`` (``RANK`` unset: a single process)."""
    return os.environ.get("RANK", "0") == "0"


def _holder_text() -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}"


def _open_locked(folder: Path) -> int:
    """An fd of ``folder/.lock`` holding an exclusive flock; :class:`RunFolderInUse` when another has it."""
    path = folder / LOCK_NAME
    for _ in range(20):  # a holder that just ended may remove the file between our open and our lock
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed in between
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RunFolderInUse(
                f"{folder} is in use by another kp2d run ({holder or 'starting'}); wait for it or choose "
                "another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # the file we locked is still the one at the path (not removed by a holder as it ended)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
            return fd
        os.close(fd)
    raise RunFolderInUse(f"{folder} is in use: its lock file keeps changing; wait, or choose another --out")


@contextlib.contextmanager
def hold_run_folder(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder/.lock`` inside the ``with``; nested holds in one process share it.

    Raises:
        RunFolderInUse: another process holds it; nothing has been written in ``folder`` but the lock file.
    """
    if not enabled or fcntl is None:
        yield
        return
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
    else:
        created = not folder.exists()
        _held[key] = [_open_locked(folder), 1, int(created)]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd, _, created = _held.pop(key)
            # removed while still locked: a run that opens the old file then finds it gone and retries
            with contextlib.suppress(OSError):
                os.unlink(key / LOCK_NAME)
            os.close(fd)
            if created:  # a run that failed before writing anything leaves no empty folder behind
                with contextlib.suppress(OSError):
                    key.rmdir()


def close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the lock fds so that only the run itself holds them.

    Only the fd is closed, never unlocked: the lock belongs to the open file, which the parent shares.
    """
    for fd, *_ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def remove_stale_temporary_files(checkpoint_dir: Path) -> int:
    """Remove ``.NAME.ckpt.*.tmp`` files (what a killed :func:`~kp2d.io.files.atomic_torch_save` leaves).

    Call only while holding the run folder: a live run's save in progress writes the same names.
    Returns how many were removed.
    """
    if not checkpoint_dir.is_dir():
        return 0
    removed, size = 0, 0
    for path in checkpoint_dir.glob(".*.ckpt.*.tmp"):
        try:
            bytes_ = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed, size = removed + 1, size + bytes_
    if removed:
        log.info("removed %d temporary file(s) of %.1f MB left in %s by an interrupted save",
                 removed, size / 1e6, checkpoint_dir)
    return removed
