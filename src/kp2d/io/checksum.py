"""A checksum of a checkpoint's entries: SHA-256 of their canonical bytes, independent of the file layout."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKSUM_KEY", "payload_checksum"]

CHECKSUM_KEY = "checksum"


def _feed(hasher: Any, value: Any) -> None:
    """``value``'s canonical bytes into ``hasher``: a type tag, a length, the content; mappings by sorted key.

    Tensors contribute dtype, shape and raw bytes, so the digest depends on values, not on how torch laid
    the file out; tuples and lists read back as each other, so they share a tag.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        tensor = tensor.to_dense() if tensor.layout != torch.strided else tensor
        flat = tensor.cpu().contiguous().reshape(-1)
        hasher.update(f"T{flat.dtype}{tuple(tensor.shape)};".encode())
        hasher.update(memoryview(flat.view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        hasher.update(b"D%d;" % len(value))
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(hasher, key)
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(b"L%d;" % len(value))
        for item in value:
            _feed(hasher, item)
    elif isinstance(value, np.ndarray) and value.dtype != object:
        array = np.ascontiguousarray(value)
        hasher.update(f"A{array.dtype.str}{array.shape};".encode())
        hasher.update(memoryview(array.reshape(-1).view(np.uint8)))
    elif isinstance(value, np.ndarray):
        _feed(hasher, value.tolist())
    elif value is None or isinstance(value, bool):
        hasher.update(b"N" if value is None else b"B%d" % value)
    elif isinstance(value, int):
        hasher.update(b"I%d;" % value)
    elif isinstance(value, float):
        hasher.update(b"F" + float(value).hex().encode() + b";")
    elif isinstance(value, str):
        encoded = value.encode("utf-8", "surrogatepass")
        hasher.update(b"S%d;" % len(encoded) + encoded)
    elif isinstance(value, bytes):
        hasher.update(b"Y%d;" % len(value) + value)
    else:  # numpy scalars, dtypes, devices ...: whatever else torch.load gives back, by its repr
        text = f"{type(value).__module__}.{type(value).__qualname__}:{value!r}".encode()
        hasher.update(b"R%d;" % len(text) + text)


def payload_checksum(payload: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's entries (all but the checksum itself), computed once per save."""
    hasher = hashlib.sha256()
    _feed(hasher, {k: v for k, v in payload.items() if k != CHECKSUM_KEY})
    return f"sha256:{hasher.hexdigest()}"
