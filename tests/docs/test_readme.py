"""The documented commands are accepted as written, in README.md and in every ``docs/**/*.md``: each ``kp2d``,
``python scripts/…`` and ``python benchmarks/…`` call in a ``bash`` block and each row of a command-line table
parses with the current options (nothing is run), each ``python`` block compiles, the ``../shared/data``
paths named exist, and each relative link or image points to a file. A block preceded by the line
``<!-- historical -->`` is a record of a command as it was once run and is not checked; use it sparingly.
The README itself stays a user's page: at most 250 lines and no ``../shared`` path.

The docs' tables are reproduced by those commands, so an option renamed or dropped must fail here rather
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
from kp2d.config import list_presets, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = [README, *sorted((REPO_ROOT / "docs").glob("**/*.md"))]
HISTORICAL = "<!-- historical -->"
SEPARATORS = {";", "&&", "||", "|", "&", "do", "done", "then", "fi", "wait"}


def _name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _blocks(language: str, path: Path = README) -> list[tuple[int, str]]:
    """``(first line number, text)`` of each fenced ``language`` block of ``path`` but the historical ones."""
    blocks, current, start, previous = [], None, 0, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if current is None and line.strip() == f"```{language}":
            current, start, historical = [], number + 1, previous == HISTORICAL
        elif current is not None and line.strip() == "```":
            if not historical:
                blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
        if line.strip():
            previous = line.strip()
    return blocks


def _all_blocks(language: str) -> list[tuple[str, str]]:
    """``("file:line", text)`` of the ``language`` blocks of the README and the docs."""
    return [(f"{_name(path)}:{first}", text) for path in DOCS for first, text in _blocks(language, path)]


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


def readme_commands() -> list[tuple[str, list[str]]]:
    """``("file:line", argv)`` of every simple command in the ``bash`` blocks of the README and the docs."""
    return [
        (f"{_name(path)}:{line}", argv)
        for path in DOCS
        for first, block in _blocks("bash", path)
        for line, argv in shell_commands(block, first)
    ]


def readme_table_commands() -> list[tuple[str, list[str]]]:
    """``("file:line", argv)`` of the command-line tables' rows in the README and the docs.

    Options in ``[…]`` are taken, of alternatives ``a\\|b`` the first.
    """
    rows = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = re.match(r"\| `kp2d ([^`]*)` \|", line)
            if match:
                text = re.sub(r"(\S+?)\\\|\S+", r"\1", match.group(1)).replace("[", "").replace("]", "")
                argv = shlex.split(text)
                rows.append((f"{_name(path)}:{number}", argv))
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
    """The arguments after ``kp2d``, else ``None``.

    Also ``python -m kp2d``, ``torchrun … -m kp2d`` and ``docker run … kp2d:TAG`` (the image's entry point is
    ``kp2d``, or ``torchrun`` with ``--entrypoint torchrun``).
    """
    if argv[0] == "kp2d":
        return argv[1:]
    if argv[:2] == ["docker", "run"]:
        image = next((i for i, token in enumerate(argv) if re.fullmatch(r"kp2d:[\w.-]+", token)), None)
        if image is None:
            return None
        entrypoint = argv[argv.index("--entrypoint") + 1] if "--entrypoint" in argv[:image] else "kp2d"
        return _kp2d_argv([entrypoint, *argv[image + 1 :]])
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
    docker = ["docker", "run", "--gpus", "all", "-v", "a:/b", "kp2d:gpu", "eval", "--model", "v4"]
    assert _kp2d_argv(docker) == ["eval", "--model", "v4"]
    docker = ["docker", "run", "--entrypoint", "torchrun", "kp2d:gpu", "--nproc_per_node", "2", "-m", "kp2d"]
    assert _kp2d_argv([*docker, "x"]) == ["x"]
    assert _kp2d_argv(["docker", "build", "-t", "kp2d:gpu", "."]) is None
    call = ["python", "scripts/warp_sweep.py", "in", "--out", "w"]
    assert _script_argv(call) == ("scripts/warp_sweep.py", ["in", "--out", "w"])


@pytest.mark.parametrize(("where", "argv"), KP2D_CALLS, ids=[w for w, _ in KP2D_CALLS])
def test_kp2d_command_parses(where, argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{where}: `kp2d {shlex.join(argv)}` is refused (exit {exit_.code})")
    config = getattr(args, "config", None) if argv[0] == "train" else None
    if config is not None and (config in list_presets() or config.startswith("recipes/")):
        load_config(config)  # a preset or packaged recipe named in the docs must exist


@pytest.mark.parametrize(("where", "call"), SCRIPT_CALLS, ids=[w for w, _ in SCRIPT_CALLS])
def test_script_command_parses(where, call, monkeypatch):
    path, argv = call
    assert (REPO_ROOT / path).is_file(), f"{where}: {path} does not exist"
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
        pytest.fail(f"{where}: `python {path} {shlex.join(argv)}` is refused (exit {exit_.code})")
    pytest.fail(f"{where}: {path} returned without parsing its options")


PYTHON_BLOCKS = _all_blocks("python")


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_compiles(where, code):
    compile(code, where, "exec")


SHARED_PATHS = sorted(
    {token for _, argv in COMMANDS for token in argv if token.startswith("../shared/") and "X" not in token}
)


@pytest.mark.parametrize("path", SHARED_PATHS)
def test_shared_data_paths_exist(path):
    if not (REPO_ROOT / "../shared/data").is_dir():
        pytest.skip("../shared/data is not beside the project")
    assert (REPO_ROOT / path).exists(), f"the docs name {path}, which is not there"


def test_readme_is_a_short_page_for_users():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md grew past 250 lines: move the detail to docs/"
    assert "../shared" not in text, "README.md names ../shared, which users do not have"


def test_historical_blocks_are_skipped(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nkp2d a\n```\n\n<!-- historical -->\n\n```bash\nkp2d --gone\n```\n```bash\nkp2d b\n```\n"
    )
    assert _blocks("bash", page) == [(2, "kp2d a"), (11, "kp2d b")]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def relative_links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of each relative Markdown link, image or ``<img src>`` of ``path``, outside code."""
    links, in_code = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = (match.group(1) or match.group(2)).split("#")[0]
            if target and not re.match(r"[a-z]+:", target):
                links.append((number, target))
    return links


LINKS = [(f"{_name(path)}:{n}", path, target) for path in DOCS for n, target in relative_links(path)]


def test_links_are_found():
    assert any(target == "docs/images/demo_matches.jpg" for _, _, target in LINKS)
    assert len(LINKS) > 30


@pytest.mark.parametrize(("where", "page", "target"), LINKS, ids=[f"{w}:{t}" for w, _, t in LINKS])
def test_relative_link_points_to_a_file(where, page, target):
    resolved = (page.parent / target).resolve()
    assert resolved.exists(), f"{where}: the link to {target} points to nothing"


def test_docs_pages_named_in_the_code_exist():
    named = {
        (source.relative_to(REPO_ROOT).as_posix(), page)
        for source in sorted((REPO_ROOT / "src").glob("**/*.py"))
        for page in re.findall(r"docs/[\w./-]+\.md", source.read_text(encoding="utf-8"))
    }
    assert named, "the code names no docs page (the early-training note in kp2d train does)"
    missing = [f"{source} names {page}" for source, page in named if not (REPO_ROOT / page).is_file()]
    assert not missing, missing
