"""The README's commands are accepted as written: every ``kp2d``, ``python scripts/…`` and
``python benchmarks/…`` call in its ``bash`` blocks and every row of its command-line table parses with the
current options (nothing is run), every ``python`` block compiles and the ``../shared/data`` paths it names
exist.

The README's tables are reproduced by those commands, so an option renamed or dropped must fail here rather
than on a user's machine. Shell is read just enough for that: line continuations, here-documents (skipped),
``;``/``&&``/``||``/``|``/``&`` separators, ``NAME=value`` assignments and ``for NAME in A B …`` loops (the
variable takes its first value), ``$(…)`` (dropped when it is a whole argument); an unknown ``$NAME`` reads
``X``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from kp2d.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
SEPARATORS = {";", "&&", "||", "|", "&", "do", "done", "then", "fi", "wait"}


def _blocks(language: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of each fenced block of ``language`` in the README."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if current is None and line.strip() == f"```{language}":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _logical_lines(block: str, first: int) -> list[tuple[int, str]]:
    """Lines with ``\\`` continuations joined and here-document bodies left out."""
    lines, pending, heredoc_end = [], None, None
    for number, line in enumerate(block.splitlines(), start=first):
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (number, line)
        if pending[1].rstrip().endswith("\\"):
            pending = (pending[0], pending[1].rstrip()[:-1])
            continue
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", pending[1])
        if heredoc:
            heredoc_end = heredoc.group(1)
        lines.append(pending)
        pending = None
    return lines


def _expand(line: str, variables: dict[str, str]) -> str:
    line = re.sub(r"(?<=\s)\$\([^()]*\)(?=\s|$)", "", line)  # `$(… echo --resume)` as a whole argument
    line = re.sub(r"\$\([^()]*\)", "X", line)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), "X"), line)


def shell_commands(block: str, first: int = 1) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every simple command of a shell ``block`` whose first line is ``first``."""
    commands, variables = [], {}
    for number, line in _logical_lines(block, first):
        lexer = shlex.shlex(_expand(line, variables), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                command.append(token)
                continue
            if command[:1] == ["for"] and len(command) >= 4 and command[2] == "in":
                variables[command[1]] = command[3]
            elif command:
                while command and re.fullmatch(r"\w+=.*", command[0]):
                    name, value = command.pop(0).split("=", 1)
                    variables[name] = value
                if command:
                    commands.append((number, command))
            command = []
    return commands


def readme_commands() -> list[tuple[int, list[str]]]:
    """``(README line, argv)`` of every simple command in the README's ``bash`` blocks."""
    return [command for first, block in _blocks("bash") for command in shell_commands(block, first)]


def readme_table_commands() -> list[tuple[int, list[str]]]:
    """``(README line, argv)`` of the command-line table's rows.

    Options in ``[…]`` are taken, of alternatives ``a\\|b`` the first.
    """
    rows = []
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.match(r"\| `kp2d ([^`]*)` \|", line)
        if match:
            text = re.sub(r"(\S+?)\\\|\S+", r"\1", match.group(1)).replace("[", "").replace("]", "")
            rows.append((number, shlex.split(text)))
    return rows


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a script's options parsed (so that nothing runs)."""


def _script_argv(argv: list[str]) -> tuple[str, list[str]] | None:
    """``("scripts/x.py", args)`` for ``python scripts/x.py args`` (or ``benchmarks/``), else ``None``."""
    if argv[0] not in ("python", "python3") or len(argv) < 2:
        return None
    if argv[1].startswith(("scripts/", "benchmarks/")) and argv[1].endswith(".py"):
        return argv[1], argv[2:]
    return None


def _kp2d_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``kp2d`` (also ``python -m kp2d`` and ``torchrun … -m kp2d``), else ``None``."""
    if argv[0] == "kp2d":
        return argv[1:]
    for start in range(len(argv) - 1):
        if argv[0] in ("python", "python3", "torchrun") and argv[start : start + 2] == ["-m", "kp2d"]:
            return argv[start + 2 :]
    return None


COMMANDS = readme_commands()
KP2D_CALLS = [(n, a) for n, argv in COMMANDS if (a := _kp2d_argv(argv)) is not None] + readme_table_commands()
SCRIPT_CALLS = [(n, s) for n, argv in COMMANDS if (s := _script_argv(argv)) is not None]


def test_the_readme_has_the_commands_this_test_reads():
    assert len(KP2D_CALLS) > 40 and len(SCRIPT_CALLS) > 20
    assert any(argv[:1] == ["train"] for _, argv in KP2D_CALLS)
    assert any(path == "benchmarks/inference.py" for _, (path, _) in SCRIPT_CALLS)


def test_shell_reading_follows_loops_assignments_and_continuations():
    block = (
        "D=../data\nfor steps in 25 50; do\n  kp2d train v4.yaml --data $D --max-steps $steps \\\n"
        "      $([ $steps = 25 ] || echo --resume)\n  cp a b$steps  # copy\ndone\n"
        "cat > x.yaml <<'YAML'\nkp2d not-a-command\nYAML\n"
        "OMP_NUM_THREADS=1 kp2d eval --json $c-$(basename $D).json && python -m kp2d match a b &"
    )
    assert shell_commands(block) == [
        (3, ["kp2d", "train", "v4.yaml", "--data", "../data", "--max-steps", "25"]),
        (5, ["cp", "a", "b25"]),
        (7, ["cat", ">", "x.yaml", "<<YAML"]),
        (10, ["kp2d", "eval", "--json", "X-X.json"]),
        (10, ["python", "-m", "kp2d", "match", "a", "b"]),
    ]
    assert _kp2d_argv(["torchrun", "--nproc_per_node", "2", "-m", "kp2d", "train", "v4"]) == ["train", "v4"]
    call = ["python", "scripts/warp_sweep.py", "in", "--out", "w"]
    assert _script_argv(call) == ("scripts/warp_sweep.py", ["in", "--out", "w"])


@pytest.mark.parametrize(("line", "argv"), KP2D_CALLS, ids=[f"README:{n}" for n, _ in KP2D_CALLS])
def test_kp2d_command_parses(line, argv):
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"README line {line}: `kp2d {shlex.join(argv)}` is refused (exit {exit_.code})")


@pytest.mark.parametrize(("line", "call"), SCRIPT_CALLS, ids=[f"README:{n}" for n, _ in SCRIPT_CALLS])
def test_script_command_parses(line, call, monkeypatch):
    path, argv = call
    assert (REPO_ROOT / path).is_file(), f"README line {line}: {path} does not exist"
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        module.main(argv)
    except _Parsed:
        return
    except SystemExit as exit_:
        pytest.fail(f"README line {line}: `python {path} {shlex.join(argv)}` is refused (exit {exit_.code})")
    pytest.fail(f"README line {line}: {path} returned without parsing its options")


@pytest.mark.parametrize(("first", "code"), _blocks("python"), ids=lambda v: str(v)[:20])
def test_python_block_compiles(first, code):
    compile(code, f"README.md:{first}", "exec")


SHARED_PATHS = sorted(
    {token for _, argv in COMMANDS for token in argv if token.startswith("../shared/") and "X" not in token}
)


@pytest.mark.parametrize("path", SHARED_PATHS)
def test_shared_data_paths_exist(path):
    if not (REPO_ROOT / "../shared/data").is_dir():
        pytest.skip("../shared/data is not beside the project")
    assert (REPO_ROOT / path).exists(), f"the README names {path}, which is not there"
