"""The run: each case in a fresh process, tables printed as they complete,
then the targets, and the outputs asked for (JSON, histogram files, PNG).

A case runs as ``python -m kproc._bench.case NAME ROUNDS`` so that cases stay
independent (no runtime, page cache or heap left over from another); its
progress lines move the family's bar, its last line is its result.  The
family modules (``pingpong``, ``create``, ``workers``, ``lateness``,
``hotplug``, ``pool``) say what to run and build their tables through ``Run``.
Context: the command-line process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

import kproc
from . import hist as H
from . import meta as M
from .common import PROGRESS
from .report import Row, Table, format_table, row_stats, table_json
from .targets import evaluate, format_verdicts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CaseError", "Run", "package_root"]

FORMAT = "kproc-bench"
FORMAT_VERSION = 1


class CaseError(RuntimeError):
    """A case's process failed; the message holds its stderr."""


def package_root() -> str:
    """The folder that holds the ``kproc`` package (put on a case's path)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(kproc.__file__)))


def _end(proc: subprocess.Popen[str]) -> None:
    """End a case: SIGINT first, so that its runtime shuts down (no process,
    no /dev/shm entry left), SIGKILL if it has not ended 10 s later."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Run:
    """One invocation of the suite: its options, tables and metadata."""

    def __init__(self, quick: bool, out: Any = None) -> None:
        self.quick = quick
        self.tables: list[Table] = []
        self.meta = M.collect(quick)
        self.out = out if out is not None else sys.stdout

    # -- cases ----------------------------------------------------------------------

    def case(self, name: str, rounds: int, bar: Any = None,
             env: dict[str, str] | None = None, timeout: float = 900.0) -> Any:
        """Run case ``name`` for ``rounds`` in its own process.

        @bar: a progress bar whose postfix shows the case's own progress;
        @env: variables added to the case's environment.
        Context: the command-line process.
        Return: the case's result (decoded JSON).
        Raises: CaseError (it failed or timed out, with its stderr).
        """
        root = package_root()
        full = dict(os.environ, **(env or {}))
        full["PYTHONPATH"] = root + os.pathsep + full.get("PYTHONPATH", "")
        argv = [sys.executable, "-m", "kproc._bench.case", name, str(rounds)]
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            _end(proc)
        with tempfile.TemporaryFile("w+") as err, \
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                 env=full) as proc:
            watchdog = threading.Timer(timeout, expire)
            watchdog.daemon = True
            watchdog.start()
            last = ""
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith(PROGRESS):
                        _, done, total = line.split()
                        if bar is not None:
                            bar.set_postfix_str(f"{name} {done}/{total}")
                    elif line.strip():
                        last = line
                proc.wait()
            except KeyboardInterrupt:
                _end(proc)
                raise
            finally:
                watchdog.cancel()
            if expired:
                raise CaseError(f"benchmark case {name} took over {timeout:g} s: ended")
            if proc.returncode != 0:
                err.seek(0)
                raise CaseError(f"benchmark case {name} failed (exit {proc.returncode}):\n"
                                f"{err.read()[-4000:]}")
        return json.loads(last)

    # -- rows and tables ----------------------------------------------------------------

    @staticmethod
    def dist(key: str, label: str, samples_ns: Iterable[int], sub: bool = False,
             note: str = "") -> Row:
        """A distribution row of ``samples_ns`` (recorded in an HdrHistogram)."""
        h, dropped = H.from_samples(samples_ns)
        return Row(key, label, hist=h, sub=sub, note=note, dropped=dropped)

    @staticmethod
    def scalar(key: str, label: str, values: dict[str, float], note: str = "") -> Row:
        """A scalar row: one value per column."""
        return Row(key, label, values=values, note=note)

    @staticmethod
    def missing(key: str, label: str, why: str, sub: bool = False) -> Row:
        """A row that says why it holds nothing."""
        return Row(key, label, sub=sub, note=f"missing: {why}")

    def add(self, table: Table) -> None:
        """Keep ``table`` and print it."""
        self.tables.append(table)
        self.out.write("\n" + format_table(table) + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        """Print a line between tables."""
        self.out.write(text + "\n")
        self.out.flush()

    # -- the end of a run ----------------------------------------------------------------

    def finish(self) -> list[dict[str, str]]:
        """Print the targets.  Return: the verdicts as JSON-ready dicts."""
        verdicts = evaluate(row_stats(self.tables))
        made = {t.key for t in self.tables}
        self.out.write("\n" + format_verdicts(verdicts, made) + "\n")
        self.out.flush()
        return [{"issue": str(v.target.issue), "target": v.target.text, "result": v.result,
                 "measured": v.shown} for v in verdicts]

    def to_json(self, verdicts: list[dict[str, str]]) -> dict[str, Any]:
        """The whole run: format, metadata, tables with their histograms, targets."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "meta": self.meta,
                "tables": [table_json(t) for t in self.tables], "targets": verdicts}

    def write_histograms(self, directory: str) -> list[str]:
        """One cyclictest-style file per distribution row, ``TABLE.ROW.hist``.
        Return: the paths written.  Raises: OSError."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for t in self.tables:
            for r in t.rows:
                if r.hist is not None and r.measured:
                    path = os.path.join(directory, f"{t.key}.{r.key}.hist")
                    H.write_cyclictest(path, r.hist, f"{t.title}: {r.label} "
                                                     f"({t.better} is better)")
                    paths.append(path)
        return paths
