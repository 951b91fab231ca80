"""Creation: create→wake→stop of one kthread against ``os.fork``+``waitpid``
and ``multiprocessing.Process`` (fork, forkserver, spawn), also from a caller
that touched 2 GB; sustained creation (2 creator kthreads for 10 s, 2 s with
``--quick``: cycles per second); and the scale row: N kthreads created and parked, their
USS, all stopped, beside a plain loop forking N idle Python children (each
blocked on a pipe read), with the cost of one create early (N = 100) and
late (the last 100).  ``--quick`` scales to 512, the default run to 4,096,
after a free-memory check either way.
Context: each case in its own process (``kproc._bench.case``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import kproc
from .common import Progress
from .progress import bar
from .report import HIGHER, LOWER, Table
from .threadfns import creator, noop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .harness import Run  # typing only

__all__ = ["CASES", "cycle_suite", "scale_suite", "scale_count"]

# What one parked kthread costs at most, measured (issue 12: USS ~2 MiB per
# kthread; a plain child ~0.7-0.9 MiB), with a margin.
BYTES_PER_KTHREAD = 3 << 20
EARLY = range(100, 200)
SAMPLE_LATE = 100


def _mp_noop() -> None:
    pass


def _touch(gib: float) -> bytearray | None:
    if not gib:
        return None
    block = bytearray(int(gib * (1 << 30)))
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def cycle_kproc(rounds: int, touch_gib: float = 0) -> list[int]:
    """create → wake → stop of one kthread (ns each)."""
    keep = _touch(touch_gib)
    progress = Progress(rounds)
    with kproc.start():
        for _ in range(20):
            kproc.kthread_stop(kproc.kthread_run(noop, None, "warm"))
        out = []
        for i in range(rounds):
            t0 = time.perf_counter_ns()
            task = kproc.kthread_create(noop, None, "cycle")
            kproc.wake_up_process(task)
            kproc.kthread_stop(task)
            out.append(time.perf_counter_ns() - t0)
            progress(i + 1)
    del keep
    return out


def cycle_fork(rounds: int, touch_gib: float = 0) -> list[int]:
    """os.fork + _exit + waitpid (ns each)."""
    keep = _touch(touch_gib)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        out.append(time.perf_counter_ns() - t0)
    del keep
    return out


def cycle_mp(rounds: int, method: str) -> list[int]:
    """multiprocessing.Process start + join (ns each)."""
    ctx: Any = mp.get_context(method)
    first = ctx.Process(target=_mp_noop)     # starts the forkserver outside the timing
    first.start()
    first.join()
    out = []
    progress = Progress(rounds)
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        p = ctx.Process(target=_mp_noop)
        p.start()
        p.join()
        out.append(time.perf_counter_ns() - t0)
        progress(i + 1)
    return out


def sustained(seconds: int, creators: int = 2) -> list[float]:
    """[create→stop cycles per second, seconds] from ``creators`` kthreads."""
    with kproc.start():
        go, finished = kproc.Completion(), kproc.Completion()
        tasks = [kproc.kthread_run(creator, (float(seconds), go, finished), "creator/%d", i)
                 for i in range(creators)]
        t0 = time.monotonic()
        kproc.complete_all(go)
        for _ in tasks:
            kproc.wait_for_completion(finished)
        elapsed = time.monotonic() - t0
        # Each has completed `finished` and is returning: stop gives its count
        # (a stop before its threadfn ran would give -EINTR instead).
        done = sum(kproc.kthread_stop(t) for t in tasks)
    return [done / elapsed, elapsed]


def _uss(pids: list[int]) -> float:
    import psutil
    step = max(1, len(pids) // 64)
    sample: list[int] = [psutil.Process(pid).memory_full_info().uss for pid in pids[::step]]
    return sum(sample) / len(sample)


def scale_kproc(count: int) -> dict[str, Any]:
    """``count`` kthreads created and parked, then all stopped."""
    progress = Progress(count)
    with kproc.start(max_kthreads=count + 16):
        one, tasks = [], []
        t0 = time.perf_counter_ns()
        for i in range(count):
            t1 = time.perf_counter_ns()
            task = kproc.kthread_create(noop, None, "scale/%d", i)
            one.append(time.perf_counter_ns() - t1)
            kproc.kthread_park(task)
            tasks.append(task)
            progress(i + 1)
        created = time.perf_counter_ns() - t0
        uss = _uss([t.pid for t in tasks])
        t0 = time.perf_counter_ns()
        for task in tasks:
            kproc.kthread_stop(task)
        stopped = time.perf_counter_ns() - t0
    return {"create_ns": created, "stop_ns": stopped, "uss": uss, "one_ns": one}


def scale_fork(count: int) -> dict[str, Any]:
    """``count`` idle children forked by a plain loop, each blocked on a pipe
    read; teardown: close the pipe, reap them all."""
    progress = Progress(count)
    r, w = os.pipe()
    pids, one = [], []
    t0 = time.perf_counter_ns()
    try:
        for i in range(count):
            t1 = time.perf_counter_ns()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)
                os._exit(0)
            one.append(time.perf_counter_ns() - t1)
            pids.append(pid)
            progress(i + 1)
        created = time.perf_counter_ns() - t0
        uss = _uss(pids)
    finally:
        t0 = time.perf_counter_ns()
        os.close(w)
        for pid in pids:
            os.waitpid(pid, 0)
        stopped = time.perf_counter_ns() - t0
        os.close(r)
    return {"create_ns": created, "stop_ns": stopped, "uss": uss, "one_ns": one}


CASES: dict[str, Any] = {
    "cycle_kproc": cycle_kproc,
    "cycle_kproc_2g": lambda n: cycle_kproc(n, 2),
    "cycle_fork": cycle_fork,
    "cycle_fork_2g": lambda n: cycle_fork(n, 2),
    "cycle_mp_fork": lambda n: cycle_mp(n, "fork"),
    "cycle_mp_forkserver": lambda n: cycle_mp(n, "forkserver"),
    "cycle_mp_spawn": lambda n: cycle_mp(n, "spawn"),
    "sustained": sustained,
    "scale_kproc": scale_kproc,
    "scale_fork": scale_fork,
}


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def scale_count(quick: bool, available: int) -> tuple[int, str]:
    """How many kthreads the scale row creates: 512 (quick) or 4,096, halved
    until they fit in 80 % of the available memory (the kproc loop and the
    plain loop run one after the other; the kproc one is the larger).
    Return: (count, a note when it was cut; 0 when even 128 do not fit)."""
    want = 512 if quick else 4096
    budget = available * 4 // 5
    count = want
    while count >= 128 and count * BYTES_PER_KTHREAD > budget:
        count //= 2
    if count < 128:
        return 0, f"needs ~{want * BYTES_PER_KTHREAD >> 20:,} MiB free"
    if count < want:
        return count, (f"cut from {want:,} to {count:,}: "
                       f"{available >> 20:,} MiB available")
    return count, ""


def _cycle(run: Run) -> None:
    n = 200 if run.quick else 2000
    cases = [("kproc", "kproc create→wake→stop", "cycle_kproc", n),
             ("kproc_2g", "kproc, caller touched 2 GB", "cycle_kproc_2g", n // 2),
             ("fork", "os.fork+waitpid, small Python", "cycle_fork", n),
             ("fork_2g", "os.fork+waitpid, caller touched 2 GB", "cycle_fork_2g",
              max(10, n // 20)),
             ("mp_fork", "multiprocessing fork", "cycle_mp_fork", n // 2),
             ("mp_forkserver", "multiprocessing forkserver", "cycle_mp_forkserver", n // 4),
             ("mp_spawn", "multiprocessing spawn", "cycle_mp_spawn", max(10, n // 20))]
    table = Table("create", "Create → wake → stop, one process per cycle", LOWER, "kproc",
                  unit="ms", scale=1e6)
    seconds = 2 if run.quick else 10
    with bar(len(cases) + 1, "create cycle") as b:
        for key, label, case, rounds in cases:
            table.rows.append(run.dist(key, label, run.case(case, rounds, b)))
            b.update()
        rate, elapsed = run.case("sustained", seconds, b)
        b.update()
    run.add(table)
    sustain = Table("sustained", f"Sustained creation: create→wake→stop from 2 creator "
                    f"kthreads for {seconds} s", HIGHER, "kproc",
                    columns=[("per_s", "cycles/s"), ("elapsed_s", "elapsed s")])
    sustain.rows.append(run.scalar("kproc", "kproc, 2 creators", {"per_s": rate,
                                                                  "elapsed_s": elapsed}))
    run.add(sustain)


def _scale(run: Run) -> None:
    count, note = scale_count(run.quick, available_bytes())
    cols = [("create_s", "create all s"), ("uss_kib", "USS each KiB"), ("stop_s", "stop all s")]
    title = f"Scale: {count:,} processes created and parked, then all stopped"
    table = Table("scale", title, LOWER, "kproc", columns=cols)
    one = Table("scale_one", f"Scale: one create while up to {count:,} are alive", LOWER,
                "kproc_100", unit="ms", scale=1e6)
    if not count:
        table.rows.append(run.missing("kproc", "kproc kthreads", note))
        run.add(table)
        return
    if note:
        table.notes.append(note)
    with bar(2, "scale") as b:
        res = {}
        for key, case in (("kproc", "scale_kproc"), ("fork", "scale_fork")):
            res[key] = run.case(case, count, b)
            b.update()
    for key, label in (("kproc", "kproc kthreads (parked)"),
                       ("fork", "plain fork loop (children on a pipe read)")):
        r = res[key]
        table.rows.append(run.scalar(key, label, {"create_s": r["create_ns"] / 1e9,
                                                  "uss_kib": r["uss"] / 1024,
                                                  "stop_s": r["stop_ns"] / 1e9}))
    last = f"{count - SAMPLE_LATE:,}..{count - 1:,}"
    for key, who in (("kproc", "kproc create"), ("fork", "plain fork")):
        samples = res[key]["one_ns"]
        one.rows.append(run.dist(f"{key}_100", f"{who}, N = 100..199",
                                 samples[EARLY.start:EARLY.stop]))
        one.rows.append(run.dist(f"{key}_full", f"{who}, N = {last}",
                                 samples[-SAMPLE_LATE:]))
    run.add(table)
    run.add(one)


def cycle_suite(run: Run) -> None:
    """The create-cycle table.  Context: the harness."""
    _cycle(run)


def scale_suite(run: Run) -> None:
    """The scale tables.  Context: the harness."""
    _scale(run)
