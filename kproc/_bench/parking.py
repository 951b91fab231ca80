"""Park/unpark round trip (SPEC §7): ``kthread_park`` of a kthread on CPU 1
until it is parked, then ``kthread_unpark`` until it runs again, against the
OS's own way to pause a process and resume it: ``SIGSTOP`` until
``waitpid(WUNTRACED)`` reports it stopped, then ``SIGCONT`` until
``waitpid(WCONTINUED)`` reports it continued.  Caller on CPU 0, peer on CPU 1.

The two are not the same promise: a parked kthread has run its own code to
the park point (kthread.c ``kthread_parkme``: it completes ``parked`` itself),
while a stopped process was stopped wherever it was.  The table shows the
halves apart (``park``: until the caller knows it is parked; ``resume``:
until it is running again).
Context: each case in its own process (``kproc._bench.case``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import kproc
from .common import CALLER_CPU, PEER_CPU, Progress, pin
from .progress import bar
from .report import LOWER, Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .harness import Run  # typing only

__all__ = ["CASES", "suite"]

WARM = 50


def parker(resumed: kproc.Completion) -> int:
    """threadfn: sleep until asked to park or stop; once at the start and
    after each unpark, complete ``resumed`` (the caller's proof that it runs
    its own code: a park before threadfn ran would park in kthread() itself)."""
    kproc.complete(resumed)
    while True:
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if kproc.kthread_should_stop():
            break
        if kproc.kthread_should_park():
            kproc.set_current_state(kproc.TASK_RUNNING)
            kproc.kthread_parkme()
            kproc.complete(resumed)
            continue
        kproc.schedule()
    kproc.set_current_state(kproc.TASK_RUNNING)
    return 0


def park_kproc(rounds: int) -> dict[str, list[int]]:
    """Park and resume times (ns) of a kthread on CPU 1."""
    pin(CALLER_CPU)
    progress = Progress(rounds)
    park_ns: list[int] = []
    resume_ns: list[int] = []
    clock = time.perf_counter_ns
    with kproc.start():
        resumed = kproc.Completion()
        task = kproc.kthread_create_on_cpu(parker, resumed, PEER_CPU, "parker/%u")
        kproc.wake_up_process(task)
        kproc.wait_for_completion(resumed)
        park, unpark, wait = kproc.kthread_park, kproc.kthread_unpark, kproc.wait_for_completion
        for i in range(rounds + WARM):
            t0 = clock()
            park(task)
            t1 = clock()
            unpark(task)
            wait(resumed)
            t2 = clock()
            if i >= WARM:
                park_ns.append(t1 - t0)
                resume_ns.append(t2 - t1)
            if not i & 255:
                progress(i)
        kproc.kthread_stop(task)
    return {"park": park_ns, "resume": resume_ns}


def park_signals(rounds: int) -> dict[str, list[int]]:
    """Stop and continue times (ns) of a child on CPU 1 through SIGSTOP/SIGCONT."""
    pin(CALLER_CPU)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        pin(PEER_CPU)
        os.close(w)
        os.read(r, 1)            # blocks until the parent closes its end
        os._exit(0)
    os.close(r)
    stop_ns: list[int] = []
    cont_ns: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(rounds + WARM):
            t0 = clock()
            os.kill(pid, signal.SIGSTOP)
            os.waitpid(pid, os.WUNTRACED)
            t1 = clock()
            os.kill(pid, signal.SIGCONT)
            os.waitpid(pid, os.WCONTINUED)
            t2 = clock()
            if i >= WARM:
                stop_ns.append(t1 - t0)
                cont_ns.append(t2 - t1)
    finally:
        os.close(w)
        os.waitpid(pid, 0)
    return {"park": stop_ns, "resume": cont_ns}


CASES: dict[str, Any] = {
    "park_kproc": park_kproc,
    "park_signals": park_signals,
}


def suite(run: Run) -> None:
    """The park/unpark table.  Context: the harness."""
    n = 2000 if run.quick else 20000
    table = Table("park", "Park/unpark round trip (caller CPU 0, peer CPU 1)", LOWER, "kproc")
    cases = (("kproc", "kproc kthread_park + kthread_unpark", "park_kproc"),
             ("signals", "SIGSTOP + SIGCONT, each confirmed by waitpid", "park_signals"))
    with bar(len(cases), "park/unpark") as b:
        for key, label, case in cases:
            halves = run.case(case, n, b)
            total = [p + q for p, q in zip(halves["park"], halves["resume"], strict=True)]
            table.rows.append(run.dist(key, label, total))
            table.rows.append(run.dist(f"{key}_park", "until parked (stopped)", halves["park"],
                                       sub=True))
            table.rows.append(run.dist(f"{key}_resume", "until running (continued) again",
                                       halves["resume"], sub=True))
            b.update()
    table.notes.append("kproc's park ends when the kthread has reached kthread_parkme() "
                       "(it completes the caller's wait); SIGSTOP stops a process wherever it is.")
    run.add(table)
