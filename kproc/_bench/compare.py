"""``kproc bench compare A.json B.json``: the ratios of two runs, row by row,
and whether each difference is beyond the noise of the runs.

A distribution row is compared by its median: ratio = B p50 ÷ A p50.  The
difference counts as beyond noise when the two medians' 95 % confidence
intervals (distribution-free: the values at ranks n/2 ± 1.96·√n/2 of each
histogram) do not overlap *and* the medians differ by at least 5 %, the
run-to-run drift seen on this kind of VM between identical runs.  A scalar
row (measured once per run) has no spread to judge: it says so.
Context: the command-line process.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import hist as H
from .report import fmt

__all__ = ["MIN_EFFECT", "load", "compare", "format_comparison"]

MIN_EFFECT = 0.10
FORMAT = "kproc-bench"


def load(path: str) -> dict[str, Any]:
    """A run written by ``kproc bench --json``.  Context: any.
    Return: its data.  Raises: ValueError (not such a file); OSError."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a `kproc bench --json` file")
    return data


def _verdict(better: str, ratio: float, a: Any, b: Any, min_effect: float) -> str:
    lo_a, hi_a = H.median_interval(a)
    lo_b, hi_b = H.median_interval(b)
    if hi_a < lo_b or hi_b < lo_a:
        if abs(ratio - 1) >= min_effect:
            worse = (ratio > 1) == (better == "lower")
            return "beyond noise: B " + ("worse" if worse else "better")
        return f"within noise (intervals apart, difference < {min_effect:.0%})"
    return "within noise (95 % intervals of the medians overlap)"


def compare(a: dict[str, Any], b: dict[str, Any],
            min_effect: float = MIN_EFFECT) -> list[dict[str, Any]]:
    """Row-by-row comparison of two runs (rows matched by table and row key);
    @min_effect: the smallest relative difference of medians called beyond noise.
    Context: any.  Return: one dict per table present in both: key, title,
    better, unit, rows [{key, label, a, b, ratio, verdict}].
    Raises: ValueError on a histogram that does not decode."""
    b_tables = {t["key"]: t for t in b["tables"]}
    out = []
    for ta in a["tables"]:
        tb = b_tables.get(ta["key"])
        if tb is None:
            continue
        b_rows = {r["key"]: r for r in tb["rows"]}
        rows = []
        for ra in ta["rows"]:
            rb = b_rows.get(ra["key"])
            if rb is None:
                continue
            if "hist" in ra and "hist" in rb:
                ha, hb = H.decode(ra["hist"]), H.decode(rb["hist"])
                va, vb = H.summary(ha)["p50"], H.summary(hb)["p50"]
                ratio = vb / va if va else math.nan
                rows.append({"key": ra["key"], "label": ra["label"], "stat": "p50",
                             "a": va / ta["scale"], "b": vb / ta["scale"], "ratio": ratio,
                             "verdict": _verdict(ta["better"], ratio, ha, hb, min_effect)})
            elif "values" in ra and "values" in rb:
                for col, head in ta["columns"]:
                    va, vb = ra["values"].get(col, math.nan), rb["values"].get(col, math.nan)
                    rows.append({"key": f"{ra['key']}.{col}", "label": f"{ra['label']}: {head}",
                                 "stat": col, "a": va, "b": vb,
                                 "ratio": vb / va if va else math.nan,
                                 "verdict": "one value per run: no spread to judge noise"})
        if rows:
            out.append({"key": ta["key"], "title": ta["title"], "better": ta["better"],
                        "unit": "" if ta["columns"] else ta["unit"], "rows": rows})
    return out


def format_comparison(a: dict[str, Any], b: dict[str, Any],
                      tables: list[dict[str, Any]]) -> str:
    """The comparison as text.  Context: any.  Return: the text."""
    def who(run: dict[str, Any]) -> str:
        m = run.get("meta", {})
        return (f"{m.get('date', '?')}, kproc {m.get('kproc_version', '?')} "
                f"{m.get('kproc_commit') or ''}, {m.get('cpu_model', '?')}, "
                f"backend {m.get('backend', '?')}").replace("  ", " ")
    lines = [f"A: {who(a)}", f"B: {who(b)}"]
    ma, mb = a.get("meta", {}), b.get("meta", {})
    for key in sorted(set(ma) | set(mb)):
        if key != "date" and ma.get(key) != mb.get(key):
            lines.append(f"  differs: {key}: A {ma.get(key)!r}, B {mb.get(key)!r}")
    if not tables:
        lines.append("no table in common")
    for t in tables:
        unit = f" ({t['unit']})" if t["unit"] else ""
        lines += ["", t["title"] + unit,
                  f"  {t['better']} is better; ratio = B ÷ A (of p50 for distributions)"]
        width = max(30, *(len(r["label"]) for r in t["rows"]))
        lines.append(f"  {'':<{width}} {'A':>10} {'B':>10} {'B ÷ A':>7}")
        for r in t["rows"]:
            ratio = "-" if math.isnan(r["ratio"]) else f"{r['ratio']:.2f}×"
            lines.append(f"  {r['label']:<{width}} {fmt(r['a']):>10} {fmt(r['b']):>10} "
                         f"{ratio:>7}  {r['verdict']}")
    return "\n".join(lines)
