"""The training image's Dockerfile, read as text (no engine here): a pinned CUDA PyTorch base, kp2d installed
from the checkout without extras, a non-root user, ``kp2d`` as the entry point, and a ``.dockerignore`` that
keeps runs, data and environments out of the build context but not what the install needs."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined and comments left out."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    pairs = [line.split(None, 1) for line in joined.splitlines() if line.strip()]
    return [(word.upper(), rest.strip()) for word, rest in pairs]


STEPS = instructions((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8"))
IGNORED = [
    line.strip()
    for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#")
]


def _args(kind: str) -> list[str]:
    return [arguments for instruction, arguments in STEPS if instruction == kind]


def test_instruction_reading():
    assert instructions("# c\nFROM a:1\nRUN x \\\n    && y\n") == [("FROM", "a:1"), ("RUN", "x      && y")]


def test_base_is_a_pinned_cuda_pytorch_runtime():
    defaults = dict(a.split("=", 1) for a in _args("ARG") if "=" in a)
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], _args("FROM")[0])
    image, _, tag = base.partition(":")
    assert image == "pytorch/pytorch" and re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag)


def test_kp2d_is_installed_from_the_checkout_without_extras():
    copied = {source for a in _args("COPY") for source in shlex.split(a)[:-1]}
    assert {"pyproject.toml", "README.md", "src"} <= copied
    installs = [a for a in _args("RUN") if "pip install" in a]
    assert len(installs) == 1 and re.search(r"pip install (--no-cache-dir )?\.(\s|$)", installs[0])
    assert "[" not in installs[0] and "-e " not in installs[0]  # no extras, not editable


def test_runs_as_a_non_root_user_with_kp2d_as_entry_point():
    user = _args("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(_args("ENTRYPOINT")[-1]) == ["kp2d"]


def _ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in IGNORED)


def test_dockerignore_keeps_runs_data_and_environments_out_but_not_the_sources():
    for path in (".git", ".venv", "runs", "data", "runs/v4/checkpoints/last.ckpt", "tests"):
        assert _ignored(path), path
    for path in ("pyproject.toml", "README.md", "src/kp2d/cli/__init__.py", "src/kp2d/weights/v4.pt"):
        assert not _ignored(path), path
