"""Work queues: dispatch latency (queue → start of execution in the worker,
one way; and the round trip until the caller knows it ran) and no-op work
throughput, against ``ProcessPoolExecutor`` and ``multiprocessing.Pool``.
Caller on CPU 0, workers on CPU 1; one-way times cross processes through a
mapped file of CLOCK_MONOTONIC stamps.
Context: each case in its own process (``kproc._bench.case``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import kproc
from .common import CALLER_CPU, PEER_CPU, Progress, Stamps, pin
from .progress import bar
from .report import HIGHER, LOWER, Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .harness import Run  # typing only

__all__ = ["CASES", "suite"]

_stamps: Stamps | None = None


def _stamps_for(path: str, n: int) -> Stamps:
    global _stamps
    if _stamps is None:
        _stamps = Stamps(path, n)
    return _stamps


def stamp_and_complete(work: kproc.KthreadWork) -> None:
    """work: write its start time to slot 0, then complete data's completion."""
    t = time.monotonic_ns()
    path, n, done = work.data
    _stamps_for(path, n).view[0] = t
    kproc.complete(done)


def noop(work: kproc.KthreadWork) -> None:
    """work: nothing."""


def producer(args: tuple[Any, list[kproc.KthreadWork], int, kproc.Completion]) -> int:
    """threadfn: queue ``count`` of its own works (each once it is idle again)."""
    worker, works, count, go = args
    kproc.wait_for_completion(go)
    queued = 0
    q = kproc.kthread_queue_work
    while queued < count:
        for w in works:
            if q(worker, w):
                queued += 1
    return 0


def _ppe_start(_: object) -> int:
    return time.monotonic_ns()


def _ppe_noop(_: object) -> None:
    return None


def _ppe_init() -> None:
    pin(PEER_CPU)


def dispatch_kproc(rounds: int) -> list[list[int]]:
    """[one-way ns, round-trip ns] of one work on a worker bound to CPU 1."""
    pin(CALLER_CPU)
    progress = Progress(rounds)
    with tempfile.TemporaryDirectory() as tmp, kproc.start():
        path = os.path.join(tmp, "stamps")
        stamps = Stamps(path, 1, create=True)
        worker = kproc.kthread_create_worker_on_cpu(PEER_CPU, 0, "bench/%u")
        done = kproc.Completion()
        work = kproc.KthreadWork(stamp_and_complete, (path, 1, done))
        queue, wait = kproc.kthread_queue_work, kproc.wait_for_completion
        one_way, round_trip = [], []
        for i in range(rounds + 200):
            t0 = time.monotonic_ns()
            queue(worker, work)
            wait(done)
            t2 = time.monotonic_ns()
            if i >= 200:
                one_way.append(stamps.view[0] - t0)
                round_trip.append(t2 - t0)
            if not i & 1023:
                progress(i)
        kproc.kthread_destroy_worker(worker)
        stamps.close()
    return [one_way, round_trip]


def dispatch_ppe(rounds: int) -> list[list[int]]:
    """[one-way, round trip] of ProcessPoolExecutor.submit().result()."""
    pin(CALLER_CPU)
    one_way, round_trip = [], []
    with ProcessPoolExecutor(max_workers=1, initializer=_ppe_init) as ex:
        for i in range(rounds + 50):
            t0 = time.monotonic_ns()
            t1 = ex.submit(_ppe_start, None).result()
            t2 = time.monotonic_ns()
            if i >= 50:
                one_way.append(t1 - t0)
                round_trip.append(t2 - t0)
    return [one_way, round_trip]


def dispatch_pool(rounds: int) -> list[list[int]]:
    """[one-way, round trip] of multiprocessing.Pool.apply_async().get()."""
    pin(CALLER_CPU)
    one_way, round_trip = [], []
    with mp.get_context("fork").Pool(1, initializer=_ppe_init) as pool:
        for i in range(rounds + 50):
            t0 = time.monotonic_ns()
            t1 = pool.apply_async(_ppe_start, (None,)).get()
            t2 = time.monotonic_ns()
            if i >= 50:
                one_way.append(t1 - t0)
                round_trip.append(t2 - t0)
    return [one_way, round_trip]


def throughput_kproc(count: int, producers: int = 1) -> list[int]:
    """[elapsed ns, works done] for ``count`` no-op works through one worker."""
    pin(CALLER_CPU)
    with kproc.start():
        worker = kproc.kthread_create_worker_on_cpu(PEER_CPU, 0, "bench/%u")
        per = count // producers
        pools = [[kproc.KthreadWork(noop) for _ in range(256)] for _ in range(producers)]
        go = kproc.Completion()
        others = [kproc.kthread_run(producer, (worker, pools[i], per, go), "prod/%d", i)
                  for i in range(1, producers)]
        q = kproc.kthread_queue_work
        kproc.kthread_flush_worker(worker)
        t0 = time.monotonic_ns()
        kproc.complete_all(go)
        queued = 0
        while queued < per:
            for w in pools[0]:
                if q(worker, w):
                    queued += 1
        for t in others:
            while kproc.task_state(t) != kproc.TASK_DEAD:
                time.sleep(0.0005)
        kproc.kthread_flush_worker(worker)
        elapsed = time.monotonic_ns() - t0
        for t in others:
            kproc.kthread_stop(t)
        kproc.kthread_destroy_worker(worker)
    return [elapsed, per * producers]


def throughput_ppe(count: int) -> list[int]:
    """[elapsed ns, calls] of ProcessPoolExecutor.submit of no-ops."""
    pin(CALLER_CPU)
    with ProcessPoolExecutor(max_workers=1, initializer=_ppe_init) as ex:
        ex.submit(_ppe_noop, None).result()
        t0 = time.monotonic_ns()
        futs = [ex.submit(_ppe_noop, None) for _ in range(count)]
        for f in futs:
            f.result()
        return [time.monotonic_ns() - t0, count]


def throughput_pool(count: int) -> list[int]:
    """[elapsed ns, calls] of multiprocessing.Pool.apply_async of no-ops."""
    pin(CALLER_CPU)
    with mp.get_context("fork").Pool(1, initializer=_ppe_init) as pool:
        pool.apply(_ppe_noop, (None,))
        t0 = time.monotonic_ns()
        res = [pool.apply_async(_ppe_noop, (None,)) for _ in range(count)]
        for r in res:
            r.get()
        return [time.monotonic_ns() - t0, count]


CASES: dict[str, Any] = {
    "dispatch_kproc": dispatch_kproc,
    "dispatch_ppe": dispatch_ppe,
    "dispatch_pool": dispatch_pool,
    "throughput_kproc": throughput_kproc,
    "throughput_kproc_3": lambda n: throughput_kproc(n, 3),
    "throughput_ppe": throughput_ppe,
    "throughput_pool": throughput_pool,
}


def suite(run: Run) -> None:
    """Dispatch (one way, round trip) and throughput tables.  Context: the harness."""
    n = 2000 if run.quick else 20000
    cases = [("kproc", "kproc worker", "dispatch_kproc", n),
             ("ppe", "ProcessPoolExecutor", "dispatch_ppe", max(200, n // 10)),
             ("pool", "multiprocessing.Pool", "dispatch_pool", max(200, n // 10))]
    one = Table("dispatch", "Work dispatch, queue → start of execution (caller CPU 0, "
                "worker CPU 1)", LOWER, "kproc")
    rt = Table("dispatch_rt", "Work dispatch round trip, queue → caller knows it ran "
               "(caller CPU 0, worker CPU 1)", LOWER, "kproc")
    with bar(len(cases), "dispatch") as b:
        for key, label, case, rounds in cases:
            one_way, round_trip = run.case(case, rounds, b)
            one.rows.append(run.dist(key, label, one_way))
            rt.rows.append(run.dist(key, label, round_trip))
            b.update()
    run.add(one)
    run.add(rt)

    count = 100_000 if run.quick else 1_000_000
    tcases = [("kproc", "kproc, 1 producer", "throughput_kproc", count),
              ("kproc_3", "kproc, caller + 2 kthreads producing", "throughput_kproc_3", count),
              ("ppe", "ProcessPoolExecutor.submit", "throughput_ppe", count // 20),
              ("pool", "multiprocessing.Pool.apply_async", "throughput_pool", count // 20)]
    table = Table("throughput", "No-op work throughput, one worker (caller CPU 0, worker "
                  "CPU 1)", HIGHER, "kproc", columns=[("works_per_s", "works/s")])
    with bar(len(tcases), "throughput") as b:
        for key, label, case, c in tcases:
            elapsed, done = run.case(case, c, b)
            table.rows.append(run.scalar(key, label, {"works_per_s": done / elapsed * 1e9}))
            b.update()
    run.add(table)
