"""Shared fixtures: where the golden vectors and data live, skipping with a reason when absent.

``KP2D_SHARED`` overrides the default ``<repo>/../shared``. Tests are grouped by kind in ``unit/``,
``golden/``, ``cli/``, ``integration/``, ``scripts/`` and ``docs/``; every test that reads the golden
vectors gets the ``golden`` marker (``pytest -m golden``), the multi-second ones carry ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("KP2D_SHARED", REPO_ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the golden vectors (directly or through a fixture) ``golden``."""
    for item in items:
        if "golden_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.golden)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set KP2D_SHARED to the folder holding golden/ and data/)")
    return path


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: ``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny HPatches-format folder (``hpatches_tiny``), one per test module (tests may damage it)."""
    from hpatches_tiny import make_tiny_hpatches

    return make_tiny_hpatches(tmp_path_factory.mktemp("hpatches"))


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


@pytest.fixture(scope="module")
def golden_net(golden_forward):
    from kp2d.models import KeyPointNet

    net = KeyPointNet(do_upsample=True, do_cross=True)
    net.load_state_dict(golden_forward["state_dict"])
    return net.eval()
