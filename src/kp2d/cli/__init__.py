"""``kp2d`` command line: one module per subcommand, each with ``add_parser(subparsers)``.

A subcommand module sets ``func`` on its parser; ``func(args) -> int`` does the work and imports what it
needs inside, so ``kp2d --help`` stays fast. A :class:`~kp2d.errors.Kp2dError` (a user mistake: missing
file, bad option) or an ``OSError`` (an output path under a file, no permission, disk full) is printed as
one line and exits with status 2, running out of memory as one line with status 1; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from kp2d.errors import Kp2dError, user_message

__all__ = ["main"]

SUBCOMMANDS = ("train", "eval", "detect", "match", "track", "export", "overfit")


def _version() -> str:
    from kp2d import __version__

    return __version__


#: Commands that run the network over images, where the allocator keeps freed memory for the next pass.
INFERENCE_COMMANDS = ("detect", "match", "track", "eval")


def build_parser() -> argparse.ArgumentParser:
    """The ``kp2d`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kp2d", description="KeyPointNet / IO-Net: train, evaluate, detect, match, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"kp2d {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"kp2d.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"kp2d.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kp2d`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # OpenCV's own warnings and errors (e.g. "PNG input buffer is incomplete") would print beside kp2d's
    # one-line errors, which name the file
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    if args.command in INFERENCE_COMMANDS:
        from kp2d.memory import keep_freed_memory

        keep_freed_memory()  # one process over many images: reuse the pages each forward pass frees
    try:
        return int(args.func(args) or 0)
    except (Kp2dError, OSError) as err:
        print(f"kp2d {args.command}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        print(f"kp2d {args.command}: error: out of memory: {user_message(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kp2d {args.command}: interrupted", file=sys.stderr)
        return 130


def _is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation: ``MemoryError``, torch's ``OutOfMemoryError`` or the CPU allocator's error."""
    text = str(err)
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
