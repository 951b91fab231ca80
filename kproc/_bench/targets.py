"""The issue targets, in one table, and their verdicts: PASS, MISS, or NOT
RUN (a row it needs was not measured in this run, e.g. ``--only``, no root,
no cyclictest).

A target names rows as ``table/row`` and a statistic (``p50``, ``p99`` of a
distribution, in ns; or a scalar column).  Kinds: ``ratio<=`` (row ÷ ref at
most the limit), ``within`` (row ÷ ref within 1 ± limit), ``plus<=`` (row −
ref at most the limit, ns), ``<=`` and ``>=`` (the row's value itself).
Context: the command-line process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .report import fmt

__all__ = ["Target", "TARGETS", "Verdict", "evaluate", "format_verdicts"]

MS = 1e6


@dataclass(frozen=True)
class Target:
    """One promise of an issue.  @unit/@scale: how a value of a ``plus<=``,
    ``<=`` or ``>=`` target is shown (ns per unit)."""

    issue: int
    text: str
    row: str
    stat: str
    kind: str
    limit: float
    ref: str | None = None
    unit: str = ""
    scale: float = 1.0


TARGETS: tuple[Target, ...] = (
    Target(12, "posix backend ping-pong p50 ≤ 1.0× raw posix_ipc semaphores",
           "pingpong/kproc_posix", "p50", "ratio<=", 1.0, "pingpong/posix_ipc"),
    Target(12, "create→wake→stop p50 ≤ 0.5× os.fork+waitpid of a small Python",
           "create/kproc", "p50", "ratio<=", 0.5, "create/fork"),
    Target(12, "create→wake→stop from a 2 GB caller within ±20 % of a small caller",
           "create/kproc_2g", "p50", "within", 0.20, "create/kproc"),
    Target(12, "≥ 2,000 create→stop cycles per second from 2 creators",
           "sustained/kproc", "per_s", ">=", 2000, unit="/s"),
    Target(12, "N parked kthreads created in ≤ 0.6× the plain fork loop's time",
           "scale/kproc", "create_s", "ratio<=", 0.6, "scale/fork"),
    Target(12, "USS per parked kthread ≤ 1.15× a plain fork's child",
           "scale/kproc", "uss_kib", "ratio<=", 1.15, "scale/fork"),
    Target(12, "all stopped in ≤ 1.0× the plain loop's teardown",
           "scale/kproc", "stop_s", "ratio<=", 1.0, "scale/fork"),
    Target(12, "one create at the full N within ±30 % of one at N = 100",
           "scale_one/kproc_full", "p50", "within", 0.30, "scale_one/kproc_100"),
    Target(3, "work round trip p50 ≤ 1/30 of ProcessPoolExecutor's round trip",
           "dispatch_rt/kproc", "p50", "ratio<=", 1 / 30, "dispatch_rt/ppe"),
    Target(3, "≥ 250,000 no-op works per second from one producer",
           "throughput/kproc", "works_per_s", ">=", 250_000, unit="/s"),
    Target(3, "lateness p50 ≤ 2× cyclictest's, SCHED_OTHER, kproc without its spin",
           "lateness_other/kproc_nospin", "p50", "ratio<=", 2.0, "lateness_other/cyclictest"),
    Target(3, "lateness p99 ≤ 2× cyclictest's, SCHED_OTHER, kproc without its spin",
           "lateness_other/kproc_nospin", "p99", "ratio<=", 2.0, "lateness_other/cyclictest"),
    Target(3, "lateness p50 ≤ 2× cyclictest's, SCHED_FIFO, kproc without its spin",
           "lateness_fifo/kproc_nospin", "p50", "ratio<=", 2.0, "lateness_fifo/cyclictest"),
    Target(3, "lateness p99 ≤ 2× cyclictest's, SCHED_FIFO, kproc without its spin",
           "lateness_fifo/kproc_nospin", "p99", "ratio<=", 2.0, "lateness_fifo/cyclictest"),
    Target(10, "cpu_down p50 ≤ raw sysfs write + 2 ms", "hotplug_down/kproc", "p50",
           "plus<=", 2 * MS, "hotplug_down/raw", "ms", MS),
    Target(10, "cpu_up p50 ≤ raw sysfs write + 5 ms", "hotplug_up/kproc", "p50",
           "plus<=", 5 * MS, "hotplug_up/raw", "ms", MS),
    Target(10, "external offline noticed ≤ 20 ms p50 after the write returned",
           "external_down/noticed", "p50", "<=", 20 * MS, unit="ms", scale=MS),
    Target(10, "external online noticed ≤ 20 ms p50 after the write returned",
           "external_up/noticed", "p50", "<=", 20 * MS, unit="ms", scale=MS),
    Target(14, "pool submit(noop).result() p50 ≤ 1/30 of ProcessPoolExecutor's",
           "pool_rt/kproc", "p50", "ratio<=", 1 / 30, "pool_rt/ppe"),
    # ProcessPoolExecutor's rate ÷ kproc's ≤ 1/20, i.e. kproc ≥ 20× (one kind of ratio)
    Target(14, "pool map(chunksize=1) of 20,000 no-ops ≥ 20× ProcessPoolExecutor's calls/s "
           "(shown: PPE ÷ kproc)", "pool_map/ppe", "calls_per_s", "ratio<=", 1 / 20,
           "pool_map/kproc"),
)


@dataclass(frozen=True)
class Verdict:
    """A target's outcome: "PASS", "MISS" or "NOT RUN", and the measured
    figure as shown (e.g. "0.83×", "raw + 1.2 ms")."""

    target: Target
    result: str
    shown: str


def _judge(t: Target, value: float, ref: float) -> tuple[bool, str]:
    if t.kind == "ratio<=":
        return value / ref <= t.limit, f"{value / ref:.3g}× (limit {t.limit:.3g}×)"
    if t.kind == "within":
        r = value / ref
        return abs(r - 1) <= t.limit, f"{r:.3g}× (limit 1 ± {t.limit:.2f})"
    if t.kind == "plus<=":
        d, base = value - ref, (t.ref or "").rpartition("/")[2]
        return d <= t.limit, (f"{base} {'+' if d >= 0 else '−'} {fmt(abs(d) / t.scale)} "
                              f"{t.unit} (limit {base} + {fmt(t.limit / t.scale)} {t.unit})")
    shown = f"{fmt(value / t.scale)} {t.unit} (limit {fmt(t.limit / t.scale)} {t.unit})"
    if t.kind == "<=":
        return value <= t.limit, shown
    if t.kind == ">=":
        return value >= t.limit, shown
    raise ValueError(f"unknown target kind {t.kind!r}")


def evaluate(stats: dict[str, dict[str, float]],
             targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """Judge every target against ``stats`` (``report.row_stats``).
    Context: any.  Return: one Verdict per target, in the table's order.
    Raises: ValueError on a target of unknown kind."""
    out = []
    for t in targets:
        row = stats.get(t.row, {}).get(t.stat, math.nan)
        ref = stats.get(t.ref, {}).get(t.stat, math.nan) if t.ref else 0.0
        missing = [k for k, v in ((t.row, row), (t.ref, ref)) if k and math.isnan(v)]
        if missing or (t.ref and t.kind != "plus<=" and not ref):
            why = ", ".join(missing or [t.ref or ""])
            out.append(Verdict(t, "NOT RUN", f"not measured: {why}"))
            continue
        ok, shown = _judge(t, row, ref)
        out.append(Verdict(t, "PASS" if ok else "MISS", shown))
    return out


def format_verdicts(verdicts: list[Verdict], tables: set[str] | None = None) -> str:
    """The targets as text, one line each; with @tables (the keys of the
    tables this run made), targets of tables not run are only counted.
    Context: any.  Return: the text."""
    lines = ["Targets (issue: promise: measured)"]
    skipped = 0
    for v in verdicts:
        if tables is not None and v.result == "NOT RUN" and \
                v.target.row.split("/")[0] not in tables:
            skipped += 1
            continue
        lines.append(f"  {v.result:<7} #{v.target.issue:<3} {v.target.text}: {v.shown}")
    if skipped:
        lines.append(f"  ({skipped} more belong to suites not run here)")
    return "\n".join(lines)
