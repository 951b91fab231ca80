"""The ``kproc`` command (SPEC §6): the parser and the dispatch to one module
per subcommand (``ps``, ``bench``, ``hotplug``, ``trace``), each of which
adds its own arguments (``add_parser``) and runs (``args.func``).

Context: the command-line process (``python -m kproc``, the ``kproc`` script).
"""

from __future__ import annotations

import argparse
import sys

from . import bench, hotplug, ps, trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]

DESCRIPTION = "kproc: kthreads on real processes (ps, bench, hotplug, trace)"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="kproc", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (ps, bench, hotplug, trace):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kproc`` command.  Return: exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)      # each subcommand's run(): its exit status
    return status


if __name__ == "__main__":
    sys.exit(main())
