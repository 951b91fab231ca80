"""The suite's families and one whole run: check the bench extra, run the
families asked for, print the targets, write what was asked (JSON,
cyclictest-style histogram files, PNG).

Context: the command-line process.
"""

from __future__ import annotations

import json
import sys

from . import create, deps, hotplug, lateness, parking, pingpong, pool, workers
from .harness import CaseError, Run
from .meta import machine
from .plot import write_png

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["FAMILIES", "run_suite"]

FAMILIES: dict[str, Callable[[Run], None]] = {
    "pingpong": pingpong.suite,
    "cycle": create.cycle_suite,
    "scale": create.scale_suite,
    "workers": workers.suite,
    "park": parking.suite,
    "lateness": lateness.suite,
    "hotplug": hotplug.suite,
    "pool": pool.suite,
}


def run_suite(quick: bool = False, only: Sequence[str] | None = None,
              json_path: str | None = None, histogram_dir: str | None = None,
              png_path: str | None = None, skip: Sequence[str] | None = None) -> int:
    """Run the families in ``only`` (all when None or empty) but those in ``skip``.

    Context: the command-line process (each case starts its own runtime).
    Return: exit status: 0; 1 when a case failed; 2 when the bench extra is
    missing or a family is unknown; 130 when interrupted.
    """
    unknown = sorted((set(only or ()) | set(skip or ())) - set(FAMILIES))
    if unknown:
        print(f"kproc bench: unknown suite {', '.join(unknown)}; choose from "
              f"{', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    lacking = deps.missing(png=png_path is not None)
    if lacking:
        print(f"kproc bench needs {', '.join(lacking)} (the bench extra): {deps.INSTALL}",
              file=sys.stderr)
        return 2
    run = Run(quick)
    m = run.meta
    commit = f" ({m['kproc_commit']})" if m["kproc_commit"] else ""
    run.say(f"kproc bench{' --quick' if quick else ''}: {machine(m)}; kproc "
            f"{m['kproc_version']}{commit}; backend {m['backend']}; {m['pinning']}")
    status = 0
    try:
        for name, family in FAMILIES.items():
            if (not only or name in only) and name not in (skip or ()):
                try:
                    family(run)
                except CaseError as exc:       # the other suites still run
                    print(f"kproc bench: suite {name}: {exc}", file=sys.stderr)
                    status = 1
    except KeyboardInterrupt:
        print("kproc bench: interrupted", file=sys.stderr)
        return 130
    verdicts = run.finish()
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(run.to_json(verdicts), f, indent=1)
        run.say(f"results and histograms written to {json_path}")
    if histogram_dir:
        paths = run.write_histograms(histogram_dir)
        run.say(f"{len(paths)} histogram files written to {histogram_dir}")
    if png_path:
        if write_png(run.tables, png_path, machine(m)):
            run.say(f"latency distributions written to {png_path}")
    return status
