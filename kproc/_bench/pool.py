"""Pools: KthreadPoolExecutor against ProcessPoolExecutor (and loky if installed).

Three tables, each case in its own process (``kproc._bench.case``):

* the ``submit(noop).result()`` round trip, kproc's pool on the housekeeping
  CPUs against ProcessPoolExecutor (fork context) with the same number of
  workers (issue 14: kproc p50 <= 1/30 of ProcessPoolExecutor's);
* 20,000 no-op calls through ``map(chunksize=1)``, calls per second
  (issue 14: >= 20x ProcessPoolExecutor's);
* a CPU-bound map (sha256 of 64 KiB blocks, 8 rounds each, chunksize 8) on N
  workers: wall time and the peak RSS summed over the caller and its workers
  (sampled every 5 ms).

Nothing is pinned: the pools decide where their workers run (kproc's are
bound one per CPU, ProcessPoolExecutor's float).  The functions the pools
run live here, at module level, so they travel by reference as
``kproc._bench.pool.*``.
Context: each case in its own process; ``suite`` in the harness.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import multiprocessing as mp
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import psutil

import kproc
from .common import Progress
from .progress import bar
from .report import HIGHER, LOWER, Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .harness import Run  # typing only

__all__ = ["CASES", "suite", "noop", "digest"]

BLOCK = 64 * 1024
MAP_CALLS = 20_000
WARM_UP = 2000


def noop(*_args: object) -> None:
    """A pool call that does nothing."""
    return None


def digest(i: int) -> str:
    """sha256 of a 64 KiB block derived from ``i``, 8 rounds: the hex digest."""
    block = i.to_bytes(8, "little") * (BLOCK // 8)
    h = b""
    for _ in range(8):
        h = hashlib.sha256(block + h).digest()
    return h.hex()


def _pool(which: str, n: int) -> Executor:
    """A pool of ``n`` workers: kproc's (on the default runtime), ppe or loky."""
    if which == "kproc":
        return kproc.KthreadPoolExecutor(n)
    if which == "loky":
        loky = importlib.import_module("loky")     # optional: only where installed
        ex: Executor = loky.get_reusable_executor(max_workers=n)
        return ex
    return ProcessPoolExecutor(n, mp_context=mp.get_context("fork"))


def _ncpus() -> int:
    return len(kproc.housekeeping_cpumask())


def _workers_of(pool: Executor) -> list[int]:
    """The pids of a pool's worker processes."""
    if isinstance(pool, kproc.KthreadPoolExecutor):
        return [w.task.pid for w in pool._pool.engine.workers if w.task is not None]
    procs: dict[int, Any] = getattr(pool, "_processes", None) or {}
    return [p.pid for p in procs.values()]


class _PeakRss:
    """Sum of RSS over the caller and the pool's workers, sampled in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process()] + [psutil.Process(p) for p in pids]
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            total = 0
            for p in self.procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def done(self) -> int:
        """Stop sampling.  Return: the peak (bytes)."""
        self.stop.set()
        self.thread.join()
        return self.peak


def roundtrip(which: str, rounds: int) -> list[int]:
    """ns of each ``submit(noop).result()`` after a warm-up."""
    progress = Progress(rounds)
    pool = _pool(which, _ncpus())
    try:
        for _ in range(min(WARM_UP, rounds)):
            pool.submit(noop).result()
        clock, out = time.perf_counter_ns, []
        for i in range(rounds):
            t = clock()
            pool.submit(noop).result()
            out.append(clock() - t)
            if not i & 4095:
                progress(i)
        return out
    finally:
        pool.shutdown()


def map_noop(which: str, count: int) -> list[int]:
    """[elapsed ns, calls] of ``count`` no-ops through ``map(chunksize=1)``."""
    pool = _pool(which, _ncpus())
    try:
        list(pool.map(noop, range(WARM_UP)))
        t = time.perf_counter_ns()
        got = sum(1 for _ in pool.map(noop, range(count), chunksize=1))
        return [time.perf_counter_ns() - t, got]
    finally:
        pool.shutdown()


def sha_map(which: str, blocks: int) -> list[int]:
    """[wall ns, peak RSS bytes, results] of digest() over ``blocks`` blocks."""
    n = _ncpus()
    pool = _pool(which, n)
    try:
        list(pool.map(digest, range(2 * n)))
        rss = _PeakRss(_workers_of(pool))
        t = time.perf_counter_ns()
        out = list(pool.map(digest, range(blocks), chunksize=8))
        wall = time.perf_counter_ns() - t
        return [wall, rss.done(), len(out)]
    finally:
        pool.shutdown()


def _have_loky() -> bool:
    return importlib.util.find_spec("loky") is not None


POOLS = ("kproc", "ppe", "loky")
CASES: dict[str, Any] = {}
for _which in POOLS:
    CASES[f"pool_rt_{_which}"] = lambda n, w=_which: roundtrip(w, n)
    CASES[f"pool_map_{_which}"] = lambda n, w=_which: map_noop(w, n)
    CASES[f"pool_sha_{_which}"] = lambda n, w=_which: sha_map(w, n)

LABELS = {"kproc": "KthreadPoolExecutor", "ppe": "ProcessPoolExecutor (fork)", "loky": "loky"}


def suite(run: Run) -> None:
    """Round trip, map throughput and CPU-bound map tables.  Context: the harness."""
    rounds = 3000 if run.quick else 20000
    blocks = 1000 if run.quick else 4000
    which = ["kproc", "ppe"] + (["loky"] if _have_loky() else [])
    rt = Table("pool_rt", "Pool: submit(noop).result() round trip, same worker count",
               LOWER, "kproc")
    tp = Table("pool_map", f"Pool: {MAP_CALLS:,} no-op calls through map(chunksize=1)",
               HIGHER, "kproc", columns=[("calls_per_s", "calls/s")])
    sha = Table("pool_sha", f"Pool: sha256 of {blocks:,} 64 KiB blocks (8 rounds each), "
                "map(chunksize=8), a worker per housekeeping CPU; RSS: caller + workers", LOWER,
                "kproc", columns=[("wall_ms", "wall ms"), ("peak_rss_mib", "peak RSS MiB")])
    with bar(3 * len(which), "pool") as b:
        for w in which:
            rt.rows.append(run.dist(w, LABELS[w], run.case(f"pool_rt_{w}", rounds, b)))
            b.update()
        for w in which:
            elapsed, done = run.case(f"pool_map_{w}", MAP_CALLS, b)
            tp.rows.append(run.scalar(w, LABELS[w], {"calls_per_s": done / elapsed * 1e9}))
            b.update()
        for w in which:
            wall, peak, _n = run.case(f"pool_sha_{w}", blocks, b)
            sha.rows.append(run.scalar(w, LABELS[w], {"wall_ms": wall / 1e6,
                                                      "peak_rss_mib": peak / 2**20}))
            b.update()
    run.add(rt)
    run.add(tp)
    run.add(sha)
