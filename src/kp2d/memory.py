"""Memory an image needs in :func:`kp2d.extract` on the CPU, and the memory this process may still use.

A forward pass holds every layer's feature maps of the whole image at once, so its memory grows with the
network input's pixels: a photo of 108 megapixels needs tens of GB, and the kernel kills a process that
runs out (exit 137, no message). :func:`check_extract_memory` estimates the need before any tensor is
made and refuses with a one-line :class:`~kp2d.errors.DataError` naming the largest size that fits, or
gives that size to process the image at (``fit_memory=True``, ``--fit-memory``).

The estimate is ``(BYTES_PER_PIXEL[backend] * pixels * batch + FIXED_BYTES) * SAFETY``, ``pixels``
being those of the network input (after ``scale_factor``, padded to a multiple of 8); the
figures were measured with ``benchmarks/memory.py`` (docs/memory.md). The budget is the smaller of the
memory the cgroup (container) still allows and the kernel's ``MemAvailable``, or ``KP2D_MEMORY_LIMIT``
(``3G``, ``500M``, bytes; ``none`` turns the check off). Models on a GPU are not checked here: PyTorch
raises its own out-of-memory error there, which the CLI reports in one line.

:func:`keep_freed_memory` asks glibc's allocator to keep the memory a forward pass frees for the next one
instead of handing it back to the kernel: large feature maps then come from pages already mapped rather
than fresh ones, whose faults cost a fifth to a third of a CPU ``extract`` (docs/backends.md). The CLI's
inference commands turn it on; the budget above then counts the freed memory the process holds.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import re
import sys
from pathlib import Path

from kp2d.errors import ConfigError, DataError

__all__ = [
    "BYTES_PER_PIXEL",
    "ENV_VAR",
    "FIXED_BYTES",
    "SAFETY",
    "available_memory",
    "check_extract_memory",
    "extract_memory",
    "format_bytes",
    "keep_freed_memory",
    "parse_bytes",
]

ENV_VAR = "KP2D_MEMORY_LIMIT"
#: Peak bytes per network-input pixel of one ``extract`` (docs/memory.md); other backends as the nearest.
BYTES_PER_PIXEL = {"torch-fp32": 420.0, "torch-bf16": 750.0}
FIXED_BYTES = 64 * 2**20  # first-call buffers and allocator slack, above the fitted 19-20 MiB
SAFETY = 1.2  # the allocator's peak varies from run to run
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_bytes(text: str) -> int | None:
    """``"3G"``, ``"500M"``, ``"2.5g"``, ``"1048576"`` → bytes (powers of 1024); ``"none"`` → None."""
    value = text.strip()
    if value.lower() in ("none", "off", "unlimited"):
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?", value)
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(
            f"{ENV_VAR} must be a size such as 3G, 500M or a number of bytes, or none; got {text!r}"
        )
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def format_bytes(count: float) -> str:
    """Bytes as ``1.2 GiB`` / ``350 MiB``."""
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.0f} MiB"


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom(root: Path = _CGROUP_ROOT) -> int | None:
    """Bytes the memory cgroup still allows (limit − usage + reclaimable page cache); None without a limit."""
    for limit_file, usage_file, stat_file in (
        ("memory.max", "memory.current", "memory.stat"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat"),  # v1
    ):
        limit = _read_number(root / limit_file)
        usage = _read_number(root / usage_file)
        if limit is None or usage is None or limit >= 2**60:  # "max" or v1's huge "no limit"
            continue
        cache = 0
        try:
            for line in (root / stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("inactive_file", "total_inactive_file") and value.strip().isdigit():
                    cache = max(cache, int(value))
        except OSError:
            pass
        return max(0, limit - usage + cache)
    return None


def _mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate; None when unlimited or unknown (no check then).

    ``KP2D_MEMORY_LIMIT`` when set, else the smaller of the cgroup's headroom and ``MemAvailable``.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return parse_bytes(override)
    known = [value for value in (_cgroup_headroom(), _mem_available()) if value is not None]
    # memory freed and kept by this process (keep_freed_memory) is not in either figure, and is reusable
    return min(known) + _kept_free_bytes() if known else None


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_kept = False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost",
    )]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None; loaded once (the memory check runs per image)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - musl has no such function
    except (OSError, AttributeError):
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse (glibc only; process-wide); whether it now does.

    Every allocation then comes from the heap (none from a fresh mapping) and the heap is not trimmed
    below 1 GiB of free memory at its top. The memory stays with the process until it exits, which suits
    a command run over images; a long-lived service pays its peak once.
    """
    global _kept
    if _kept:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    return _kept


def _kept_free_bytes() -> int:
    """Free bytes in this process's heap while :func:`keep_freed_memory` is on (glibc >= 2.33), else 0."""
    libc = _glibc() if _kept else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return 0
    return int(libc.mallinfo2().fordblks)


def _padded_pixels(height: int, width: int) -> int:
    return (-(-height // 8) * 8) * (-(-width // 8) * 8)


def extract_memory(height: int, width: int, batch: int = 1, backend: str | None = None) -> int:
    """Estimated peak bytes of ``extract`` on ``batch`` images whose network input is ``height x width``."""
    per_pixel = BYTES_PER_PIXEL["torch-bf16" if backend == "torch-bf16" else "torch-fp32"]
    return int((per_pixel * _padded_pixels(height, width) * max(batch, 1) + FIXED_BYTES) * SAFETY)


def check_extract_memory(
    height: int,
    width: int,
    batch: int = 1,
    scale_factor: float = 1.0,
    backend: str | None = None,
    fit: bool = False,
    budget: int | None = None,
) -> tuple[int, int]:
    """The network input size ``(H', W')`` to run an ``height x width`` image at, when it fits the memory.

    Args:
        height, width: the image's size; the network sees it resized by ``scale_factor``.
        batch: images of that size run together.
        backend: the :mod:`kp2d.deploy.backends` backend's name (None: the plain network).
        fit: when it does not fit, return the largest (same aspect) input size that does instead of
            refusing.
        budget: bytes available (default: :func:`available_memory`; None there means no check).

    Returns:
        ``(round(height * scale_factor), round(width * scale_factor))`` when that fits, else (with ``fit``)
        the smaller size that does.

    Raises:
        DataError: it does not fit (and ``fit`` is off, or not even a 32-px image fits); the message
            names the largest image size that fits.
    """
    net_height, net_width = max(1, round(height * scale_factor)), max(1, round(width * scale_factor))
    if budget is None:
        budget = available_memory()
    need = extract_memory(net_height, net_width, batch, backend)
    if budget is None or need <= budget:
        return net_height, net_width
    per_pixel = BYTES_PER_PIXEL["torch-bf16" if backend == "torch-bf16" else "torch-fp32"]
    pixels = (budget / SAFETY - FIXED_BYTES) / (per_pixel * max(batch, 1))
    shrink = math.sqrt(max(pixels, 0.0) / (net_height * net_width))
    while True:  # the padding to a multiple of 8 may cost a few steps of 1%
        fit_height, fit_width = math.floor(height * shrink), math.floor(width * shrink)
        fitted = math.floor(net_height * shrink), math.floor(net_width * shrink)
        if min(fitted) < 32 or extract_memory(*fitted, batch, backend) <= budget:
            break
        shrink *= 0.99
    at_scale = f" at scale_factor {scale_factor:g}" if scale_factor != 1 else ""
    what = f"image is {width}x{height} pixels{at_scale}: extracting needs about {format_bytes(need)}"
    available = f"{format_bytes(budget)} of memory is available"
    if min(fitted) < 32:
        raise DataError(f"{what}, {available}; not even a 32-pixel image fits (free memory or set {ENV_VAR})")
    if fit:
        return fitted
    raise DataError(
        f"{what}, {available}; the largest size that fits is {fit_width}x{fit_height}{at_scale} (resize "
        f"the image, or pass fit_memory=True / --fit-memory to process it at that size)"
    )
