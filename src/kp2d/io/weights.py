"""The weights shipped in the package: their names and the file a name or path stands for."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kp2d.errors import CheckpointError

__all__ = ["DEFAULT_MODEL", "list_pretrained", "resolve_model_path"]

#: The model used when none is named: ``KeyPointNet.from_pretrained()``, the CLIs' ``--model``.
DEFAULT_MODEL = "liteslim"


def list_pretrained() -> list[str]:
    """Names of the pretrained weights shipped in the package (``v0`` … ``v4`` when trained)."""
    folder = resources.files("kp2d") / "weights"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".pt"))


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A pretrained name (``"v4"``) or a checkpoint path → the file to read."""
    text = str(name_or_path)
    shipped = resources.files("kp2d") / "weights" / f"{text}.pt"
    if "/" not in text and not text.endswith((".pt", ".ckpt", ".pth")) and shipped.is_file():
        return Path(str(shipped))
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix or "/" in text:
        raise CheckpointError(f"checkpoint not found: {path}")
    available = ", ".join(list_pretrained()) or "none shipped in this install"
    raise CheckpointError(f"unknown model '{text}': not a file and not a pretrained name ({available})")
