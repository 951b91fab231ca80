"""``kproc trace summary FILE [--json]``: what a trace file holds, per kthread.

Per track (kthread, kthreadd, caller): its name, how many events of each kind,
how many works it executed; and the works' execution times (p50, p99, max).
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict

from .output import print_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace, _SubParsersAction
    from typing import TypedDict

    class Track(TypedDict):
        """One track of a trace: a kthread, kthreadd or the caller."""

        pid: int
        name: str
        works: int
        events: dict[str, int]

    class WorkTimes(TypedDict):
        """How many works ran, and their execution times (µs; None without works)."""

        count: int
        p50_us: float | None
        p99_us: float | None
        max_us: float | None

    class TraceSummary(TypedDict):
        """summarize()'s result, as ``--json`` prints it."""

        tracks: list[Track]
        works: WorkTimes

__all__ = ["summarize", "format_summary", "add_parser", "run"]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def summarize(path: str) -> TraceSummary:
    """Read a kproc trace file.  Return: {"tracks": [...], "works": {...}}.

    Raises: OSError, ValueError (not a Chrome trace-event JSON object).
    """
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "traceEvents" not in doc:
        raise ValueError(f"{path} is not a Chrome trace-event JSON file")
    names: dict[int, str] = {}
    counts: defaultdict[int, Counter[str]] = defaultdict(Counter)
    open_slices: defaultdict[int, list[float]] = defaultdict(list)
    durations: list[float] = []
    per_track: Counter[int] = Counter()
    for e in doc["traceEvents"]:
        pid = e.get("pid")
        if e.get("ph") == "M":
            if e.get("name") == "thread_name":
                names[pid] = e["args"]["name"]
            continue
        counts[pid][e.get("name")] += 1
        if e.get("ph") == "B":
            open_slices[pid].append(e["ts"])
        elif e.get("ph") == "E" and open_slices[pid]:
            durations.append(e["ts"] - open_slices[pid].pop())
            per_track[pid] += 1
    tracks: list[Track] = [{"pid": pid, "name": names.get(pid, "?"), "works": per_track[pid],
               "events": dict(counts[pid])} for pid in sorted(set(names) | set(counts))]
    works: WorkTimes = {"count": len(durations), "p50_us": _pct(durations, 50),
             "p99_us": _pct(durations, 99), "max_us": max(durations) if durations else None}
    return {"tracks": tracks, "works": works}


def format_summary(summary: TraceSummary) -> str:
    """Render summarize()'s result as text."""
    lines = [f"  {'PID':>7} {'NAME':<18} {'WORKS':>6} EVENTS"]
    for t in summary["tracks"]:
        ev = ", ".join(f"{k} {v}" for k, v in sorted(t["events"].items()))
        lines.append(f"  {t['pid']:>7} {t['name']:<18} {t['works']:>6} {ev}")
    w = summary["works"]
    if w["count"]:
        lines.append(f"works executed: {w['count']}, time p50 {w['p50_us']:.1f} µs, "
                     f"p99 {w['p99_us']:.1f} µs, max {w['max_us']:.1f} µs")
    else:
        lines.append("works executed: 0")
    return "\n".join(lines)


def run(args: Namespace) -> int:
    """Entry point of ``kproc trace summary``.  Return: exit status (2 for a file
    that cannot be read or is no trace)."""
    try:
        summary = summarize(args.file)
    except (OSError, ValueError) as exc:
        print(f"kproc trace: {exc}", file=sys.stderr)
        return 2
    return print_result(summary, args.json, format_summary)


def add_parser(sub: _SubParsersAction[ArgumentParser]) -> ArgumentParser:
    """Add the ``trace`` subcommand (``trace summary FILE``) to an argparse
    subparsers object."""
    p = sub.add_parser("trace", help="read trace files written with start(trace=...)")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    summary = tsub.add_parser("summary", help="events and work times per kthread")
    summary.add_argument("file", help="a trace JSON file")
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")
    summary.set_defaults(func=run)
    return p
