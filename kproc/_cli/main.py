"""The ``kproc`` command: the parser and the dispatch to one module per
subcommand (``ps``, ``bench``, ``hotplug``, ``trace``), each of which adds its
own arguments (``add_parser``) and runs (``args.func``).

A closed standard output (``kproc ps --json | head -1``) ends the command
quietly with the status a process killed by SIGPIPE reports (141), as the
shell tools in such a pipeline do; the subcommand's ``finally`` blocks (the
hotplug commands bring CPUs back) still run, since it is an exception here and
not the signal.

Context: the command-line process (``python -m kproc``, the ``kproc`` script).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from .._core.native import load_mem_class
from . import bench, hotplug, ps, trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main", "version_text"]

DESCRIPTION = "kproc: kthreads on real processes (ps, bench, hotplug, trace)"
EXIT_SIGPIPE = 128 + signal.SIGPIPE


def version_text() -> str:
    """What ``kproc --version`` prints: the version and whether C is built."""
    native = "built" if load_mem_class() is not None else "not built: pure-Python path"
    return f"kproc {__version__} (C extension {native})"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="kproc", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (ps, bench, hotplug, trace):
        module.add_parser(sub)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush finds no pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kproc`` command.

    Return: the subcommand's exit status; 141 when standard output was closed
    by its reader.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)      # each subcommand's run(): its exit status
        sys.stdout.flush()                 # a closed pipe shows here, not at exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_SIGPIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
