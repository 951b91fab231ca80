"""Completion ping-pong across two processes (SPEC §7): kproc's futex and
posix backends against ``multiprocessing.Event``, raw posix_ipc semaphores,
``os.pipe`` and the C futex floor (``benchmarks/c/futex_floor``, built by
``make floor``; a wheel has no checkout, and the row says so).
Caller on CPU 0, peer on CPU 1.
Context: each case in its own process (``kproc._bench.case``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import time
from typing import Any, Literal

import kproc
from .common import CALLER_CPU, PEER_CPU, Progress, pin
from .meta import checkout
from .progress import bar
from .report import LOWER, Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from .harness import Run  # typing only

__all__ = ["CASES", "suite", "floor_path"]

WARM = 200
SPIN_NS = 50_000              # kproc's default spin (KPROC_SPIN_US), for the raw spin row


def kproc_pong(args: tuple[kproc.Completion, kproc.Completion, int]) -> int:
    """threadfn: answer ``rounds`` pings."""
    ping, pong, rounds = args
    for _ in range(rounds):
        kproc.wait_for_completion(ping)
        kproc.complete(pong)
    return 0


def pingpong_kproc(rounds: int, backend: Literal["futex", "posix"],
                   spin: bool = True) -> list[int]:
    """Round trips (ns) of complete(ping) → wait(pong) with a kthread on CPU 1.

    @spin: False runs with ``KPROC_SPIN_US=0`` (every wait that finds the
    completion not done sleeps at once), to set beside the raw semaphores.
    """
    if not spin:
        os.environ["KPROC_SPIN_US"] = "0"     # this case's own process: read at start()
    pin(CALLER_CPU)
    progress = Progress(rounds)
    with kproc.start(backend=backend):
        ping, pong = kproc.Completion(), kproc.Completion()
        task = kproc.kthread_create_on_cpu(kproc_pong, (ping, pong, rounds + WARM), PEER_CPU,
                                           "pong/%u")
        kproc.wake_up_process(task)
        complete, wait, clock = kproc.complete, kproc.wait_for_completion, time.perf_counter_ns
        for _ in range(WARM):
            complete(ping)
            wait(pong)
        out = []
        for i in range(rounds):
            t0 = clock()
            complete(ping)
            wait(pong)
            out.append(clock() - t0)
            if not i & 1023:
                progress(i)
        kproc.kthread_stop(task)
    return out


def _event_peer(a: Event, b: Event, rounds: int) -> None:
    pin(PEER_CPU)
    for _ in range(rounds):
        a.wait()
        a.clear()
        b.set()


def pingpong_mp_event(rounds: int) -> list[int]:
    """Round trips (ns) through two multiprocessing.Event."""
    pin(CALLER_CPU)
    ctx = mp.get_context("fork")
    a, b = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_event_peer, args=(a, b, rounds))
    p.start()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        a.set()
        b.wait()
        b.clear()
        out.append(time.perf_counter_ns() - t0)
    p.join()
    return out


def pingpong_posix_ipc(rounds: int, spin_ns: int = 0) -> list[int]:
    """Round trips (ns) through two raw posix_ipc semaphores, between a parent on
    CPU 0 and its forked child on CPU 1 (kproc's rows: the caller and a kthread).

    @spin_ns: > 0 tries the semaphore (``acquire(0)``) for that long before
    the blocking ``acquire()``, as kproc's waits spin before they sleep.
    """
    import posix_ipc
    pin(CALLER_CPU)
    tag = f"/kproc-bench-{os.getpid()}"
    a = posix_ipc.Semaphore(tag + "a", posix_ipc.O_CREX)
    b = posix_ipc.Semaphore(tag + "b", posix_ipc.O_CREX)
    a.unlink()
    b.unlink()
    pid = os.fork()
    if pid == 0:
        pin(PEER_CPU)
        for _ in range(rounds):
            _sem_wait(a, spin_ns, posix_ipc.BusyError)
            b.release()
        os._exit(0)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        a.release()
        _sem_wait(b, spin_ns, posix_ipc.BusyError)
        out.append(time.perf_counter_ns() - t0)
    os.waitpid(pid, 0)
    return out


def _sem_wait(sem: Any, spin_ns: int, busy: type[BaseException]) -> None:
    if spin_ns > 0:
        end = time.monotonic_ns() + spin_ns
        while time.monotonic_ns() < end:
            try:
                sem.acquire(0)
                return
            except busy:
                pass
    sem.acquire()


def pingpong_pipe(rounds: int) -> list[int]:
    """Round trips (ns) of a byte over two pipes."""
    pin(CALLER_CPU)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        pin(PEER_CPU)
        for _ in range(rounds):
            os.read(r1, 1)
            os.write(w2, b"x")
        os._exit(0)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        os.write(w1, b"x")
        os.read(r2, 1)
        out.append(time.perf_counter_ns() - t0)
    os.waitpid(pid, 0)
    return out


def floor_path() -> str | None:
    """The built C futex floor: ``$KPROC_BENCH_FLOOR``, or the checkout's
    ``benchmarks/c/futex_floor``; None when there is none."""
    path = os.environ.get("KPROC_BENCH_FLOOR")
    if path is None:
        root = checkout()
        path = os.path.join(root, "benchmarks", "c", "futex_floor") if root else None
    return path if path and os.access(path, os.X_OK) else None


def _c_floor(path: str, n: int, spin_ns: int) -> list[int]:
    out = subprocess.run([path, str(n), str(spin_ns), str(CALLER_CPU), str(PEER_CPU)],
                         capture_output=True, text=True, check=True, timeout=300)
    return [int(x) for x in out.stdout.split()]


CASES: dict[str, Any] = {
    "pingpong_kproc_futex": lambda n: pingpong_kproc(n, "futex"),
    "pingpong_kproc_posix": lambda n: pingpong_kproc(n, "posix"),
    "pingpong_kproc_posix_nospin": lambda n: pingpong_kproc(n, "posix", spin=False),
    "pingpong_mp_event": pingpong_mp_event,
    "pingpong_posix_ipc": pingpong_posix_ipc,
    "pingpong_posix_ipc_spin": lambda n: pingpong_posix_ipc(n, SPIN_NS),
    "pingpong_pipe": pingpong_pipe,
}


def suite(run: Run) -> None:
    """The ping-pong table.  Context: the harness."""
    n = 5000 if run.quick else 50000
    cases = [("kproc_futex", "kproc futex backend", "pingpong_kproc_futex", n),
             ("kproc_posix", "kproc posix backend", "pingpong_kproc_posix", n // 5),
             ("kproc_posix_nospin", "kproc posix backend, no spin", "pingpong_kproc_posix_nospin",
              n // 5),
             ("mp_event", "multiprocessing.Event", "pingpong_mp_event", n // 5),
             ("posix_ipc", "posix_ipc semaphores (raw)", "pingpong_posix_ipc", n // 5),
             ("posix_ipc_spin", "posix_ipc semaphores, try 50 µs first", "pingpong_posix_ipc_spin",
              n // 5),
             ("pipe", "os.pipe", "pingpong_pipe", n // 5)]
    table = Table("pingpong", "Completion ping-pong round trip (caller CPU 0, peer CPU 1)",
                  LOWER, "kproc_futex")
    floor = floor_path()
    with bar(len(cases) + 2, "ping-pong") as b:
        for key, label, case, rounds in cases:
            table.rows.append(run.dist(key, label, run.case(case, rounds, b)))
            b.update()
        for key, label, spin, rounds in (("c_floor_spin", "C futex floor, spin 50 µs",
                                          50_000, n),
                                         ("c_floor", "C futex floor, no spin", 0, n // 5)):
            if floor is None:
                table.rows.append(run.missing(key, label, "benchmarks/c/futex_floor is not "
                                              "built (a checkout's `make floor`)"))
            else:
                table.rows.append(run.dist(key, label, _c_floor(floor, rounds, spin)))
            b.update()
    run.add(table)
