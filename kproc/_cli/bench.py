"""``kproc bench [--quick] [--json PATH] [--only SUITE]``: the latency suite
(SPEC §7), run from the ``benchmarks`` package as ``python -m benchmarks``
would run it.

Context: the command-line process; the suite starts its own runtimes.
"""

from __future__ import annotations

import runpy
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace, _SubParsersAction

__all__ = ["add_parser", "run"]


def run(args: Namespace) -> int:
    """Entry point of ``kproc bench``.  Return: exit status (2 without the
    ``benchmarks`` package)."""
    argv = ["benchmarks"] + (["--quick"] if args.quick else []) + \
        (["--json", args.json] if args.json else []) + \
        [x for name in args.only or () for x in ("--only", name)]
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_module("benchmarks", run_name="__main__")
    except ModuleNotFoundError:
        print("kproc bench: the benchmarks package is not importable here; run it "
              "from a source checkout (make bench)", file=sys.stderr)
        return 2
    finally:
        sys.argv = old
    return 0


def add_parser(sub: _SubParsersAction[ArgumentParser]) -> ArgumentParser:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    p = sub.add_parser("bench", help="the latency suite (SPEC §7)")
    p.add_argument("--quick", action="store_true", help="short runs")
    p.add_argument("--json", metavar="PATH", help="also write results as JSON")
    p.add_argument("--only", action="append", metavar="SUITE",
                   help="pingpong, cycle, scale, workers or hotplug (repeatable)")
    p.set_defaults(func=run)
    return p
