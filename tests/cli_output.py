"""What a failed ``kp2d`` command wrote, as the CLI tests check it."""

from __future__ import annotations


def single_error_line(capsys) -> str:
    """The one line a failed command wrote to stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
