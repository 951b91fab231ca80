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
            "samples": [x / scale for x in samples_ns],
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


def plot(sections, path):
    """Write a PNG with one panel of latency CDFs per section, if matplotlib is here.

    @sections: {title: rows from summarize()}.  Return: True if written.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, 4 * len(sections)))
    axes = [axes] if len(sections) == 1 else list(axes)
    for ax, (title, rows) in zip(axes, sections.items()):
        for r in rows:
            xs = sorted(r["samples"])
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=r["name"])
        ax.set_xscale("log")
        ax.set_xlabel(rows[0]["unit"] if rows else "")
        ax.set_ylabel("fraction ≤ x")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
