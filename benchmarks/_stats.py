"""Percentiles, tables and progress for the benchmarks."""

import contextlib
import statistics
import sys


def pct(samples, q):
    s = sorted(samples)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def summarize(name, samples_ns, unit="µs", scale=1e3):
    return {"name": name, "n": len(samples_ns), "unit": unit,
            "p50": pct(samples_ns, 50) / scale, "p99": pct(samples_ns, 99) / scale,
            "mean": statistics.fmean(samples_ns) / scale if samples_ns else float("nan")}


def table(title, rows, ref_name):
    """Print rows (from summarize) with the ratio of each p50 to ``ref_name``'s."""
    ref = next((r for r in rows if r["name"] == ref_name), None)
    print(f"\n{title}")
    print(f"  {'':<34} {'p50':>11} {'p99':>11} {'ratio p50 to ' + ref_name:>22}")
    for r in rows:
        ratio = r["p50"] / ref["p50"] if ref and ref["p50"] else float("nan")
        r["ratio_to_kproc"] = ratio
        print(f"  {r['name']:<34} {r['p50']:>8.2f} {r['unit']:<2} {r['p99']:>8.2f} "
              f"{r['unit']:<2} {ratio:>20.2f}x")
    sys.stdout.flush()


@contextlib.contextmanager
def progress(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        class _Bar:
            def update(self, n=1):
                pass
        yield _Bar()
        return
    with tqdm(total=total, desc=desc, leave=False, file=sys.stderr) as bar:
        yield bar
