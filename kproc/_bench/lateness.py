"""Delayed-work lateness: how late a timer's work starts after its expiry,
against ``threading.Timer`` and cyclictest (rt-tests), each row saying how
it ran: kproc with its spin before expiry (``KPROC_TIMER_SPIN_US``, default
100 µs) and without it (0: it sleeps to the expiry as cyclictest does); at
SCHED_OTHER, and at SCHED_FIFO (priority 50, the kernel's ``sched_set_fifo``)
beside cyclictest ``-p 50``.  Worker and cyclictest on CPU 1, the caller on
CPU 0; ``count`` timers 1 ms apart.
Context: each case in its own process (``kproc._bench.case``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

import kproc
from .common import CALLER_CPU, PEER_CPU, Progress, Stamps, pin
from .progress import bar
from .report import LOWER, Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .harness import Run  # typing only

__all__ = ["CASES", "suite", "FIFO_PRIORITY"]

SPACING_NS = 1_000_000
FIFO_PRIORITY = 50          # MAX_RT_PRIO / 2: what sched_set_fifo() gives (kernel/sched/syscalls.c)
_stamps: Stamps | None = None


def stamp_index(work: kproc.KthreadWork) -> None:
    """work: write its start time to slot i of data = (path, n, i)."""
    t = time.monotonic_ns()
    global _stamps
    path, n, i = work.data
    if _stamps is None:
        _stamps = Stamps(path, n)
    _stamps.view[i] = t


def lateness_kproc(count: int, fifo: bool = False) -> list[int]:
    """``count`` delayed works due 1 ms apart; samples: start − due (ns)."""
    pin(CALLER_CPU)
    progress = Progress(count)
    with tempfile.TemporaryDirectory() as tmp, kproc.start():
        path = os.path.join(tmp, "stamps")
        stamps = Stamps(path, count, create=True)
        worker = kproc.kthread_create_worker_on_cpu(PEER_CPU, 0, "bench/%u")
        task = worker.task                 # a created worker always has its kthread
        if fifo and task is not None:
            # kproc.sched_set_fifo() is the kernel's call for this and comes with
            # issue 10; this branch predates it, so the policy is set on the
            # worker's process directly, as that call does.
            os.sched_setscheduler(task.pid, os.SCHED_FIFO,
                                  os.sched_param(FIFO_PRIORITY))
        dworks = [kproc.KthreadDelayedWork(stamp_index, (path, count, i)) for i in range(count)]
        warm = kproc.KthreadWork(stamp_index, (path, count, 0))   # imports this module there
        kproc.kthread_queue_work(worker, warm)
        kproc.kthread_flush_worker(worker)
        base = time.monotonic_ns() + 50_000_000
        due = []
        for i, d in enumerate(dworks):
            target = base + i * SPACING_NS
            kproc.kthread_queue_delayed_work(worker, d, (target - time.monotonic_ns()) / 1e9)
            due.append(target)
        # Sleep past each expiry rather than poll: a poll would take the worker
        # lock (and fire timers) from CPU 0 while the worker runs them.
        while time.monotonic_ns() < due[-1] + 50_000_000:
            time.sleep(0.25)
            progress(min(count, max(0, (time.monotonic_ns() - base) // SPACING_NS)))
        kproc.kthread_flush_worker(worker)
        out = [stamps.view[i] - due[i] for i in range(count)]
        kproc.kthread_destroy_worker(worker)
        stamps.close()
    return out


def lateness_timer(count: int) -> list[int]:
    """threading.Timer, one per due time, started up front; samples: start − due."""
    pin(PEER_CPU)
    got = [0] * count
    base = time.monotonic_ns() + 200_000_000
    timers = []

    def fire(i: int) -> None:
        got[i] = time.monotonic_ns()
    for i in range(count):
        target = base + i * SPACING_NS
        t = threading.Timer((target - time.monotonic_ns()) / 1e9, fire, (i,))
        t.start()
        timers.append((t, target))
    out = []
    for i, (t, target) in enumerate(timers):
        t.join()
        out.append(got[i] - target)
    return out


def cyclictest() -> str | None:
    """The cyclictest executable, or None."""
    return shutil.which("cyclictest") or ("/usr/bin/cyclictest"
                                          if os.path.exists("/usr/bin/cyclictest") else None)


def lateness_cyclictest(count: int, fifo: bool = False) -> list[int]:
    """cyclictest on CPU 1, same period and count (SCHED_OTHER, or SCHED_FIFO
    50 with @fifo): its histogram (1 µs buckets) turned into samples (ns)."""
    exe = cyclictest()
    if exe is None:
        return []
    argv = [exe, "-q", "-t1", "-a", str(PEER_CPU), "-i", "1000", "-l", str(count),
            "-h", "20000", "-m"] + (["-p", str(FIFO_PRIORITY)] if fifo else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=count / 500 + 60)
    samples = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            samples += [int(parts[0]) * 1000] * int(parts[1])
    return samples


CASES: dict[str, Any] = {
    "lateness_kproc": lateness_kproc,
    "lateness_kproc_fifo": lambda n: lateness_kproc(n, fifo=True),
    "lateness_timer": lateness_timer,
    "lateness_cyclictest": lateness_cyclictest,
    "lateness_cyclictest_fifo": lambda n: lateness_cyclictest(n, fifo=True),
}


def _spin_us() -> str:
    value = os.environ.get("KPROC_TIMER_SPIN_US", "100")
    return value if value.strip() not in ("", "0") else "100"


def suite(run: Run) -> None:
    """The SCHED_OTHER and SCHED_FIFO lateness tables.  Context: the harness."""
    count = 2000 if run.quick else 10000
    spin = _spin_us()
    kinds = [("kproc_spin", f"kproc delayed work, spin {spin} µs before expiry",
              "lateness_kproc", {"KPROC_TIMER_SPIN_US": spin}),
             ("kproc_nospin", "kproc delayed work, no spin (KPROC_TIMER_SPIN_US=0)",
              "lateness_kproc", {"KPROC_TIMER_SPIN_US": "0"})]
    title = f"Delayed-work lateness, {count:,} timers 1 ms apart (worker CPU {PEER_CPU}), "
    other = Table("lateness_other", title + "SCHED_OTHER", LOWER, "kproc_nospin")
    fifo = Table("lateness_fifo", title + f"SCHED_FIFO {FIFO_PRIORITY}", LOWER, "kproc_nospin")
    has_cyclictest, root = cyclictest() is not None, os.geteuid() == 0
    no_ct = "cyclictest is not installed (Debian: rt-tests; `make bench` installs it as root)"
    with bar(7, "lateness", unit="case") as b:
        for key, label, case, env in kinds:
            other.rows.append(run.dist(key, label, run.case(case, count, b, env=env)))
            b.update()
        other.rows.append(run.dist("timer", "threading.Timer", run.case("lateness_timer",
                                                                        count, b)))
        b.update()
        if has_cyclictest:
            other.rows.append(run.dist("cyclictest", "cyclictest, SCHED_OTHER",
                                       run.case("lateness_cyclictest", count, b)))
        else:
            other.rows.append(run.missing("cyclictest", "cyclictest, SCHED_OTHER", no_ct))
        b.update()
        for key, label, case, env in kinds:
            label = label.replace("kproc delayed work", "kproc, worker SCHED_FIFO")
            if root:
                fifo.rows.append(run.dist(key, label, run.case(case + "_fifo", count, b,
                                                               env=env)))
            else:
                fifo.rows.append(run.missing(key, label, "SCHED_FIFO needs root"))
            b.update()
        label = f"cyclictest -p {FIFO_PRIORITY}, SCHED_FIFO"
        if has_cyclictest and root:
            fifo.rows.append(run.dist("cyclictest", label,
                                      run.case("lateness_cyclictest_fifo", count, b)))
        else:
            fifo.rows.append(run.missing("cyclictest", label,
                                         no_ct if not has_cyclictest else "needs root"))
        b.update()
    run.add(other)
    run.add(fifo)
