"""The import direction of the package: each module imports only its own layer or those below it.

Every ``import`` in ``src/kp2d`` counts, at module level or inside a function (a function-level import
defers loading, it does not change the dependency). Scripts and benchmarks stand beside the CLI and do
not import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "src"

#: The package itself (``kp2d/__init__.py``, the public API): listed by its exact name only.
ROOT = "kp2d"

#: Bottom to top; a module may import modules of its own layer or a lower one. The longest prefix that
#: matches a module's name (``kp2d.io`` matches ``kp2d.io.images``) gives its layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kp2d.errors",),
    ("kp2d.config", "kp2d.geometry", "kp2d.runtime", "kp2d.checks", "kp2d.memory"),
    ("kp2d.io", "kp2d.data", "kp2d.demo"),
    ("kp2d.features",),
    ("kp2d.models",),
    ("kp2d.visualization",),
    ("kp2d.eval", "kp2d.deploy"),
    ("kp2d.tracking", "kp2d.video", ROOT),
    ("kp2d.augmentation", "kp2d.losses", "kp2d.train"),
    ("kp2d.cli", "kp2d.__main__"),
)


def layer_of(module: str) -> int:
    """The layer index of ``module``: the longest prefix listed in :data:`LAYERS` wins."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != ROOT and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise KeyError(f"{module} has no layer: add it to LAYERS in {Path(__file__).name}")
    return best


def module_name(path: Path, root: Path = SOURCE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def kp2d_imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a kp2d module in ``path``, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "kp2d"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "kp2d":
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if submodule in known else node.module))
    return sorted(set(found))


def import_graph(root: Path = SOURCE) -> dict[str, list[tuple[int, str]]]:
    paths = {module_name(path, root): path for path in sorted((root / "kp2d").rglob("*.py"))}
    return {name: kp2d_imports(path, set(paths)) for name, path in paths.items()}


def upward_imports(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """``"module:line imports target (layer a < b)"`` for each import of a higher layer."""
    problems = []
    for module, imports in graph.items():
        own = layer_of(module)
        for line, target in imports:
            if layer_of(target) > own:
                problems.append(
                    f"{module}:{line} imports {target} (layer {own} imports layer {layer_of(target)})"
                )
    return problems


def import_cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Every cycle of modules importing each other, found by depth-first search (one per back edge)."""
    edges = {
        module: sorted({target for _, target in imports if target in graph and target != module})
        for module, imports in graph.items()
    }
    cycles, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in edges[module]:
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    problems = upward_imports(import_graph())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("folder", ["scripts", "benchmarks"])
def test_scripts_and_benchmarks_do_not_import_the_cli(folder):
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {target}"
        for path in sorted((REPO_ROOT / folder).glob("*.py"))
        for line, target in kp2d_imports(path, set())
        if target == "kp2d.cli" or target.startswith("kp2d.cli.")
    ]
    assert not offenders, "\n".join(offenders)


def test_checks_find_a_planted_upward_import_and_cycle(tmp_path):
    package = tmp_path / "kp2d"
    (package / "io").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("import os\n")
    (package / "io" / "__init__.py").write_text("")
    (package / "io" / "images.py").write_text("def f():\n    from kp2d.io import files\n")
    (package / "io" / "files.py").write_text("from kp2d.io.images import f\n")
    planted = "def g():\n    from kp2d.cli.main import run  # upward, in a function\n"
    (package / "geometry.py").write_text(planted)
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == ["kp2d.geometry:2 imports kp2d.cli.main (layer 1 imports layer 9)"]
    assert import_cycles(graph) == [["kp2d.io.files", "kp2d.io.images", "kp2d.io.files"]]


@pytest.mark.slow
def test_import_kp2d_loads_no_training_code():
    import subprocess
    import sys

    code = (
        "import sys, kp2d\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('kp2d.train', 'kp2d.augmentation', "
        "'kp2d.losses', 'kp2d.cli', 'kp2d.eval', 'kp2d.deploy', 'yaml'))))"
    )
    env = {"PYTHONPATH": str(SOURCE)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.split() == []
