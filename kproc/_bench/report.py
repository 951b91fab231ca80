"""The tables of a run: rows, what is better, ratios, and their text and JSON.

Two kinds of table.  A *distribution* table has one HdrHistogram per row
and shows n, p50, p90, p99, p99.9 and max in the table's unit.  A *scalar*
table has one value per row and column (times, sizes, rates measured once).
Every table says whether lower or higher is better, and its ratio column is
always the row divided by the table's reference row (a kproc row), written
in the header.  Only rows that measure the same thing as the reference get
a ratio: a sub-row (a part of the row above it, shown indented) never does,
nor does a row that says why it is missing.
Context: the command-line process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import hist as H

__all__ = ["Row", "Table", "fmt", "format_table", "table_json", "row_stats"]

LOWER, HIGHER = "lower", "higher"
STAT_COLUMNS = ("n", "p50", "p90", "p99", "p99.9", "max")


@dataclass
class Row:
    """One line of a table.

    @key: stable name inside its table (``compare`` matches rows by it);
    @hist: the HdrHistogram of a distribution row; @values: column key →
    value of a scalar row; @sub: a part of the row above (indented, no
    ratio); @note: why the row has no data (e.g. "missing: ..."), or a
    remark; @dropped: samples out of the histogram's range.
    """

    key: str
    label: str
    hist: Any = None
    values: dict[str, float] = field(default_factory=dict)
    sub: bool = False
    note: str = ""
    dropped: int = 0

    def stats(self) -> dict[str, float]:
        """The row's summary (ns) or values; empty when it has no data."""
        if self.hist is not None:
            return H.summary(self.hist)
        return dict(self.values)

    @property
    def measured(self) -> bool:
        """True when the row holds data."""
        s = self.stats()
        return bool(s) and (self.hist is None or s["n"] > 0)


@dataclass
class Table:
    """A titled table.  @better: "lower" or "higher"; @unit and @scale: the
    unit shown and ns per unit (distribution tables); @ref: the key of the
    ratio's denominator; @columns: (key, header) of a scalar table's values
    (empty for a distribution table); @notes: lines printed under it."""

    key: str
    title: str
    better: str
    ref: str
    unit: str = "µs"
    scale: float = 1e3
    columns: list[tuple[str, str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        """The row of that key, or None."""
        return next((r for r in self.rows if r.key == key), None)

    @property
    def ref_label(self) -> str:
        """The reference row's label (its key when absent)."""
        ref = self.row(self.ref)
        return ref.label if ref else self.ref


def fmt(value: float) -> str:
    """A number with as many decimals as its size calls for."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    a = abs(value)
    if a >= 10_000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(num: float, den: float) -> str:
    if not den or math.isnan(den) or math.isnan(num):
        return "-"
    r = num / den
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.3f}×"


def _header(table: Table) -> list[str]:
    if table.columns:
        how = f"ratio = row ÷ {table.ref_label}"
    else:
        how = f"{table.unit}; ratio = row p50 ÷ {table.ref_label} p50"
    return [table.title, f"  {table.better} is better; {how}"]


def _dist_lines(table: Table) -> list[str]:
    ref = table.row(table.ref)
    ref50 = ref.stats()["p50"] if ref is not None and ref.measured else math.nan
    width = max([30] + [len(r.label) + 2 * r.sub for r in table.rows])
    lines = [f"  {'':<{width}} " + " ".join(f"{c:>9}" for c in STAT_COLUMNS) + f" {'ratio':>8}"]
    for r in table.rows:
        label = ("  " if r.sub else "") + r.label
        if not r.measured:
            lines.append(f"  {label:<{width}} {r.note or 'no samples'}")
            continue
        s = r.stats()
        cells = [f"{int(s['n']):>9,}"] + [f"{fmt(s[c] / table.scale):>9}"
                                          for c in STAT_COLUMNS[1:]]
        ratio = "" if r.sub else _ratio(s["p50"], ref50)
        note = f"  {r.note}" if r.note else ""
        if r.dropped:
            note += f"  ({r.dropped} samples out of range, not counted)"
        lines.append(f"  {label:<{width}} " + " ".join(cells) + f" {ratio:>8}{note}")
    return lines


def _scalar_lines(table: Table) -> list[str]:
    ref = table.row(table.ref)
    width = max([30] + [len(r.label) + 7 for r in table.rows])
    heads = [h for _, h in table.columns]
    cw = max([12] + [len(h) for h in heads])
    lines = [f"  {'':<{width}} " + " ".join(f"{h:>{cw}}" for h in heads)]
    for r in table.rows:
        label = ("  " if r.sub else "") + r.label
        if not r.measured:
            lines.append(f"  {label:<{width}} {r.note or 'not measured'}")
            continue
        cells = [fmt(r.values.get(k, math.nan)) for k, _ in table.columns]
        note = f"  {r.note}" if r.note else ""
        lines.append(f"  {label:<{width}} " + " ".join(f"{c:>{cw}}" for c in cells) + note)
    if ref is not None and ref.measured:
        for r in table.rows:
            if r is ref or r.sub or not r.measured:
                continue
            cells = [_ratio(r.values.get(k, math.nan), ref.values.get(k, math.nan))
                     for k, _ in table.columns]
            label = f"ratio: {r.label}"
            lines.append(f"  {label:<{width}} " + " ".join(f"{c:>{cw}}" for c in cells))
    return lines


def format_table(table: Table) -> str:
    """The table as text: title, direction and ratio line, rows, notes.
    Context: any.  Return: the text (no final newline)."""
    body = _scalar_lines(table) if table.columns else _dist_lines(table)
    return "\n".join(_header(table) + body + [f"  {n}" for n in table.notes])


def table_json(table: Table, with_hist: bool = True) -> dict[str, Any]:
    """The table as JSON-ready data: its fields, each row's stats (ns for
    distributions) and, with @with_hist, each histogram encoded.
    Context: any.  Return: the dict."""
    rows = []
    for r in table.rows:
        row: dict[str, Any] = {"key": r.key, "label": r.label, "sub": r.sub, "note": r.note}
        if r.hist is not None:
            row["stats_ns"] = {k: None if math.isnan(v) else v for k, v in r.stats().items()}
            row["dropped"] = r.dropped
            if with_hist:
                row["hist"] = H.encode(r.hist)
        else:
            row["values"] = dict(r.values)
        rows.append(row)
    return {"key": table.key, "title": table.title, "better": table.better,
            "ref": table.ref, "unit": table.unit, "scale": table.scale,
            "columns": [list(c) for c in table.columns], "notes": list(table.notes),
            "rows": rows}


def row_stats(tables: list[Table]) -> dict[str, dict[str, float]]:
    """{"table/row": stats} of every measured row.  Context: any.
    Return: that dict (ns for distributions, the values for scalars)."""
    out: dict[str, dict[str, float]] = {}
    for t in tables:
        for r in t.rows:
            if r.measured:
                out[f"{t.key}/{r.key}"] = r.stats()
    return out
