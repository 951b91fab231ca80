"""``kproc bench [--quick] [--only SUITE] [--json FILE] [--histogram DIR]
[--png FILE]`` and ``kproc bench compare A.json B.json``: the latency suite
(SPEC §7), shipped in the package (``kproc._bench``), so it runs from an
installed wheel in any directory.  It needs the ``bench`` extra
(hdrhistogram, tqdm; matplotlib for ``--png``) and says so without it.

Context: the command-line process; the suite starts its own runtimes.
"""

from __future__ import annotations

import sys

from .._bench.compare import MIN_EFFECT, compare, format_comparison, load
from .._bench.suite import FAMILIES, run_suite
from .._bench import deps
from .output import print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace, _SubParsersAction

__all__ = ["add_parser", "run"]


def _compare(args: Namespace) -> int:
    lacking = deps.missing()
    if lacking:
        print(f"kproc bench compare needs {', '.join(lacking)}: {deps.INSTALL}",
              file=sys.stderr)
        return 2
    if not 0 <= args.min_effect < 1000:
        print("kproc bench compare: --min-effect must be between 0 and 1000 %",
              file=sys.stderr)
        return 2
    try:
        a, b = load(args.a), load(args.b)
        tables = compare(a, b, args.min_effect / 100)
    except (OSError, ValueError) as exc:
        print(f"kproc bench compare: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print_json({"a": args.a, "b": args.b, "tables": tables})
    else:
        print(format_comparison(a, b, tables))
    return 0


def run(args: Namespace) -> int:
    """Entry point of ``kproc bench``.  Context: the command-line process.
    Return: exit status: 0; 1 when a case failed; 2 on bad arguments or
    without the bench extra; 130 when interrupted."""
    if getattr(args, "bench_command", None) == "compare":
        return _compare(args)
    return run_suite(quick=args.quick, only=args.only, json_path=args.json,
                     histogram_dir=args.histogram, png_path=args.png, skip=args.skip)


def add_parser(sub: _SubParsersAction[ArgumentParser]) -> ArgumentParser:
    """Add the ``bench`` subcommand (and ``bench compare``) to an argparse
    subparsers object.  Context: the command-line process.  Return: its parser."""
    p = sub.add_parser("bench", help="the latency suite: HdrHistogram tables, targets, "
                       "compare two runs",
                       description="Every comparison side by side in one run; tables of "
                       "n, p50, p90, p99, p99.9, max; each target marked PASS or MISS. "
                       f"Needs the bench extra: {deps.INSTALL}.")
    p.add_argument("--quick", action="store_true",
                   help="short runs (a few minutes; the scale row at 512 kthreads)")
    p.add_argument("--only", action="append", metavar="SUITE", choices=list(FAMILIES),
                   help=f"run only this suite (repeatable): {', '.join(FAMILIES)}")
    p.add_argument("--skip", action="append", metavar="SUITE", choices=list(FAMILIES),
                   help="leave this suite out (repeatable), e.g. hotplug, which takes a "
                        "CPU offline as root")
    p.add_argument("--json", metavar="FILE",
                   help="write the results, their histograms and the run's metadata")
    p.add_argument("--histogram", metavar="DIR",
                   help="write one cyclictest-style histogram file per distribution")
    p.add_argument("--png", metavar="FILE", help="plot the distributions (needs matplotlib)")
    p.set_defaults(func=run, bench_command=None)
    inner = p.add_subparsers(dest="bench_command")
    c = inner.add_parser("compare", help="ratios of two runs, and whether each difference "
                         "is beyond the noise of the runs")
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    c.add_argument("--json", action="store_true", help="print JSON instead of tables")
    c.add_argument("--min-effect", type=float, default=MIN_EFFECT * 100, metavar="PCT",
                   help="the smallest difference of medians called beyond noise, in %% "
                        "(default %(default)g)")
    return p
