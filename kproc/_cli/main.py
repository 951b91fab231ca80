"""The ``kproc`` command line: ``kproc ps`` (and the subcommands later issues add)."""

import argparse
import json
import sys

__all__ = ["main"]


def _print_result(result, as_json, render):
    """Print ``result`` as indented JSON, or as the text ``render(result)``.  Return: 0."""
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(result))
    return 0


def _cmd_ps(args):
    from .ps import find_runtimes, format_table, snapshot
    runtimes = []
    for pid, fd in find_runtimes():
        try:
            runtimes.append(snapshot(pid, fd))
        except (OSError, ValueError):
            continue   # exited meanwhile, or not ours to read
    return _print_result(runtimes, args.json, format_table)


def _cmd_bench(args):
    import runpy
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


def _cmd_trace(args):
    from .trace import summarize, format_summary
    try:
        summary = summarize(args.file)
    except (OSError, ValueError) as exc:
        print(f"kproc trace: {exc}", file=sys.stderr)
        return 2
    return _print_result(summary, args.json, format_summary)


def build_parser():
    parser = argparse.ArgumentParser(prog="kproc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ps = sub.add_parser("ps", help="kthreadd and kthreads of every runtime of this user")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.set_defaults(func=_cmd_ps)
    bench = sub.add_parser("bench", help="the latency suite (SPEC §7)")
    bench.add_argument("--quick", action="store_true", help="short runs")
    bench.add_argument("--json", metavar="PATH", help="also write results as JSON")
    bench.add_argument("--only", action="append", metavar="SUITE",
                       help="pingpong, cycle, scale, workers or hotplug (repeatable)")
    bench.set_defaults(func=_cmd_bench)
    from .hotplug import add_parser as add_hotplug_parser
    add_hotplug_parser(sub)
    trace = sub.add_parser("trace", help="read trace files written with start(trace=...)")
    tsub = trace.add_subparsers(dest="trace_command", required=True)
    summary = tsub.add_parser("summary", help="events and work times per kthread")
    summary.add_argument("file", help="a trace JSON file")
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")
    summary.set_defaults(func=_cmd_trace)
    return parser


def main(argv=None):
    """Entry point of the ``kproc`` command.  Return: exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
