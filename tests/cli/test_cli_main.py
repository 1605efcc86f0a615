"""``kp2d``'s entry point: what reaches the user when a subcommand fails."""

from __future__ import annotations

import errno

import pytest

import kp2d.cli.detect
from kp2d.cli import main
from kp2d.errors import DataError, user_message


def _fail_with(monkeypatch, error: BaseException) -> None:
    def run(args):
        raise error

    monkeypatch.setattr(kp2d.cli.detect, "run", run)


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (OSError(errno.EACCES, "Permission denied", "out/x.png"), 2, "Permission denied: out/x.png"),
        (FileExistsError(errno.EEXIST, "File exists", "afile"), 2, "File exists: afile"),
        (DataError("x.png: cannot read\nthis file"), 2, "x.png: cannot read this file"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: 7e16 bytes"), 1, "out of memory: "),
        (MemoryError(), 1, "out of memory"),
    ],
)
def test_failures_are_one_line(monkeypatch, capsys, error, status, line):
    _fail_with(monkeypatch, error)
    assert main(["detect", "x.png"]) == status
    err = capsys.readouterr().err
    assert err.startswith(f"kp2d detect: error: {line}") and err.count("\n") == 1


def test_other_errors_keep_their_traceback(monkeypatch):
    _fail_with(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["detect", "x.png"])


def test_user_message_joins_lines():
    assert user_message(DataError("first\n  second\n\nthird")) == "first second third"


def test_version(capsys):
    import kp2d

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"kp2d {kp2d.__version__}"
