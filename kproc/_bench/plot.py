"""The PNG of a run: one panel per distribution table, each row's latency
CDF on a log axis, every panel titled with what is better and the machine.

Context: the command-line process (matplotlib, of the bench extra).
"""

from __future__ import annotations

import textwrap
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .report import Table  # typing only

__all__ = ["make_figure", "write_png"]


def _cdf(hist: Any, scale: float) -> tuple[list[float], list[float]]:
    total = hist.get_total_count()
    xs, ys, seen = [], [], 0
    for item in hist.get_recorded_iterator():
        seen += item.count_at_value_iterated_to
        xs.append(max(item.value_iterated_to, 1) / scale)
        ys.append(seen / total)
    return xs, ys


def make_figure(tables: list[Table], machine: str) -> Any:
    """The figure of the distribution tables, one panel each (a matplotlib
    Figure), or None when no table has a distribution.
    Context: the command-line process.  Raises: ImportError without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [t for t in tables if not t.columns and any(r.measured for r in t.rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)), squeeze=False)
    for ax, table in zip(axes[:, 0], panels):
        for row in table.rows:
            if row.hist is not None and row.measured:
                xs, ys = _cdf(row.hist, table.scale)
                ax.step(xs, ys, where="post", linestyle="--" if row.sub else "-",
                        label=("  " if row.sub else "") + row.label)
        ax.set_xscale("log")
        ax.set_xlabel(table.unit)
        ax.set_ylabel("fraction ≤ x")
        head = textwrap.fill(table.title, 90)
        side = "further left" if table.better == "lower" else "further right"
        ax.set_title(f"{head}\n{table.better} is better ({side}) · {machine}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def write_png(tables: list[Table], path: str, machine: str) -> bool:
    """Write the distribution tables of a run to ``path`` (``make_figure``).
    Context: the command-line process.
    Return: False when no table has a distribution (nothing written).
    Raises: ImportError without matplotlib; OSError."""
    fig = make_figure(tables, machine)
    if fig is None:
        return False
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
