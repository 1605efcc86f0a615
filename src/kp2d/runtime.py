"""Devices, numeric precision and the process group of a (possibly distributed) run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kp2d.errors import Kp2dError

__all__ = ["DistributedContext", "autocast_dtype", "cpu_has_fast_bf16", "init_distributed", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available, else ``mps``, else ``cpu``; other names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise Kp2dError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Kp2dError(f"device '{name}' requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise Kp2dError(
            f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Kp2dError("device 'mps' requested but MPS is not available")
    return device


def _cpu_flags() -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64
            flags.update(value.split())
    return flags


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """Native bf16 arithmetic: AVX512-BF16 or AMX on x86, the BF16 extension on Arm.

    oneDNN also "supports" bf16 on plain AVX-512 by emulation, which is slower than fp32, so that is not
    enough (see docs/notes-from-code.md).
    """
    flags = _cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (``None`` = plain fp32).

    ``auto`` picks bf16 on CUDA GPUs that support it and on CPUs with native bf16 (AVX512-BF16/AMX),
    where it is faster than fp32; else fp32.
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise Kp2dError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a ``torchrun`` job (world size 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that logs and writes checkpoints)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part (distributed training)."""
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the process group set up by ``torchrun`` (NCCL on GPU, gloo on CPU), if any.

    Returns the context and the device this process should use (``cuda:LOCAL_RANK`` on GPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    log.info("process %d/%d on %s (%s)", rank, world_size, device, backend)
    return DistributedContext(rank, world_size, local_rank), device
