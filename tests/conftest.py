"""Shared fixtures: where the golden vectors and data live, skipping with a reason when absent.

``KP2D_SHARED`` overrides the default ``<repo>/../shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("KP2D_SHARED", REPO_ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set KP2D_SHARED to the folder holding golden/ and data/)")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """``../shared/golden``: outputs of the original code."""
    return _require(SHARED_DIR / "golden", "golden vectors")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data``: training photos, HPatches-format sets."""
    return _require(SHARED_DIR / "data", "shared data")


@pytest.fixture(scope="session")
def golden_forward(golden_dir: Path) -> dict:
    return torch.load(golden_dir / "keypointnet_forward.pt", weights_only=False)
