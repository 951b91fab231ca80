"""Latency distributions as HdrHistograms (the ``hdrhistogram`` package).

Values are recorded in nanoseconds, from 1 ns to one hour, at 3 significant
figures (a value is known to 0.1 %).  A summary is n, min, mean, p50, p90,
p99, p99.9 and max; ``median_interval`` is the distribution-free 95 %
interval of the median that ``compare`` judges noise with; the histogram
files are cyclictest's ``-h`` format (1 µs buckets, non-empty ones only).
Context: the command-line process (cases send raw samples; the harness
records them here).
"""

from __future__ import annotations

import math
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["PERCENTILES", "new", "from_samples", "summary", "encode", "decode",
           "median_interval", "cyclictest_lines", "write_cyclictest"]

LOWEST_NS = 1
HIGHEST_NS = 3_600 * 10**9
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
Z95 = 1.96


def new() -> Any:
    """An empty histogram of nanoseconds.  Context: any.
    Return: a ``hdrh.histogram.HdrHistogram``.  Raises: ImportError without
    the ``hdrhistogram`` package."""
    from hdrh.histogram import HdrHistogram
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)


def from_samples(samples_ns: Iterable[int]) -> tuple[Any, int]:
    """A histogram of ``samples_ns``.  Context: any.
    Return: (the histogram, how many samples were out of its range: below
    0 or above an hour; they are not recorded).  Raises: ImportError."""
    hist = new()
    dropped = 0
    for value in samples_ns:
        if value < 0 or not hist.record_value(int(value)):
            dropped += 1
    return hist, dropped


def summary(hist: Any) -> dict[str, float]:
    """{n, min, mean, p50, p90, p99, p99.9, max} of ``hist`` in ns (NaN but n
    without samples).  Context: any.  Return: that dict."""
    n = hist.get_total_count()
    if not n:
        return {"n": 0, **{k: math.nan for k in
                           ("min", "mean", "p50", "p90", "p99", "p99.9", "max")}}
    at = hist.get_percentile_to_value_dict(list(PERCENTILES))
    return {"n": n, "min": float(hist.get_min_value()), "mean": float(hist.get_mean_value()),
            "p50": float(at[50.0]), "p90": float(at[90.0]), "p99": float(at[99.0]),
            "p99.9": float(at[99.9]), "max": float(hist.get_max_value())}


def encode(hist: Any) -> str:
    """The histogram's compressed, base64 V2 encoding (what HdrHistogram's
    log format holds).  Context: any.  Return: that text."""
    blob = hist.encode()
    return blob.decode("ascii") if isinstance(blob, bytes) else str(blob)


def decode(text: str) -> Any:
    """The histogram ``encode`` wrote.  Context: any.  Return: a histogram.
    Raises: ValueError when ``text`` is no encoded histogram; ImportError."""
    from hdrh.histogram import HdrHistogram
    try:
        return HdrHistogram.decode(text.encode("ascii"))
    except Exception as exc:        # the codec raises TypeError, zlib.error, its own
        raise ValueError(f"not an encoded HdrHistogram: {exc}") from exc


def median_interval(hist: Any, z: float = Z95) -> tuple[float, float]:
    """The distribution-free confidence interval of the median: the values at
    ranks n/2 ± z·√n/2 (the binomial order-statistic interval; z = 1.96 for
    95 %).  Context: any.  Return: (low, high) in ns; (NaN, NaN) when empty."""
    n = hist.get_total_count()
    if not n:
        return math.nan, math.nan
    half = 100.0 * z / (2.0 * math.sqrt(n))
    low, high = max(0.0, 50.0 - half), min(100.0, 50.0 + half)
    return (float(hist.get_value_at_percentile(low)),
            float(hist.get_value_at_percentile(high)))


def cyclictest_lines(hist: Any, label: str) -> list[str]:
    """``hist`` as cyclictest ``-h`` prints a histogram: ``bucket count``
    lines, 1 µs buckets, non-empty buckets only, then the totals.
    Context: any.  Return: the lines (no newlines)."""
    buckets: dict[int, int] = {}
    for item in hist.get_recorded_iterator():
        us = int(item.value_iterated_to) // 1000
        buckets[us] = buckets.get(us, 0) + int(item.count_at_value_iterated_to)
    s = summary(hist)
    lines = [f"# {label}", "# latency in µs (1 µs buckets), count", "# Histogram"]
    lines += [f"{us:06d} {count:06d}" for us, count in sorted(buckets.items())]
    if s["n"]:
        lines += [f"# Total: {int(s['n']):09d}", f"# Min Latencies: {int(s['min'] // 1000):05d}",
                  f"# Avg Latencies: {int(s['mean'] // 1000):05d}",
                  f"# Max Latencies: {int(s['max'] // 1000):05d}"]
    else:
        lines.append("# Total: 000000000")
    lines.append("# Histogram Overflows: 00000")
    return lines


def write_cyclictest(path: str, hist: Any, label: str) -> None:
    """Write ``cyclictest_lines(hist, label)`` to ``path``.  Context: any.
    Raises: OSError."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(cyclictest_lines(hist, label)) + "\n")
