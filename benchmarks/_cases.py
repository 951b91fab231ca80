"""One measurement per process: ``python -m benchmarks._cases NAME ROUNDS``.

Each case prints a JSON list of samples (ns) on stdout.  Running every case in
a fresh process keeps them independent (no runtime, page cache or heap left
over from another case).  Two-process cases pin the caller to CPU 0 and the
peer to CPU 1 (the cross-CPU figure: see SPEC §7 on bimodal unpinned runs).
"""

import json
import multiprocessing as mp
import os
import sys
import time

CALLER_CPU, PEER_CPU = 0, 1


def _pin(cpu):
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


# -- threadfns (module level: passed by reference) ---------------------------------------

def kproc_pong(args):
    import kproc
    ping, pong, rounds = args
    for _ in range(rounds):
        kproc.wait_for_completion(ping)
        kproc.complete(pong)
    return 0


def noop(_):
    return 0


def _mp_noop():
    pass


# -- cases ---------------------------------------------------------------------------------

def pingpong_kproc(rounds, backend):
    import kproc
    _pin(CALLER_CPU)
    with kproc.start(backend=backend):
        ping, pong = kproc.Completion(), kproc.Completion()
        task = kproc.kthread_create_on_cpu(kproc_pong, (ping, pong, rounds + 200), PEER_CPU,
                                           "pong/%u")
        kproc.wake_up_process(task)
        complete, wait = kproc.complete, kproc.wait_for_completion
        for _ in range(200):
            complete(ping)
            wait(pong)
        out = []
        clock = time.perf_counter_ns
        for _ in range(rounds):
            t0 = clock()
            complete(ping)
            wait(pong)
            out.append(clock() - t0)
        kproc.kthread_stop(task)
    return out


def _event_peer(a, b, rounds):
    _pin(PEER_CPU)
    for _ in range(rounds):
        a.wait()
        a.clear()
        b.set()


def pingpong_mp_event(rounds):
    _pin(CALLER_CPU)
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


def pingpong_posix_ipc(rounds):
    import posix_ipc
    _pin(CALLER_CPU)
    tag = f"/kproc-bench-{os.getpid()}"
    a = posix_ipc.Semaphore(tag + "a", posix_ipc.O_CREX)
    b = posix_ipc.Semaphore(tag + "b", posix_ipc.O_CREX)
    a.unlink()
    b.unlink()
    pid = os.fork()
    if pid == 0:
        _pin(PEER_CPU)
        for _ in range(rounds):
            a.acquire()
            b.release()
        os._exit(0)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        a.release()
        b.acquire()
        out.append(time.perf_counter_ns() - t0)
    os.waitpid(pid, 0)
    return out


def pingpong_pipe(rounds):
    _pin(CALLER_CPU)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        _pin(PEER_CPU)
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


def _touch(gib):
    if not gib:
        return None
    block = bytearray(int(gib * (1 << 30)))
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def cycle_kproc(rounds, touch_gib=0):
    import kproc
    keep = _touch(touch_gib)
    with kproc.start():
        for _ in range(20):
            kproc.kthread_stop(kproc.kthread_run(noop, None, "warm"))
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            task = kproc.kthread_create(noop, None, "cycle")
            kproc.wake_up_process(task)
            kproc.kthread_stop(task)
            out.append(time.perf_counter_ns() - t0)
    del keep
    return out


def cycle_fork(rounds, touch_gib=0):
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


def cycle_mp(rounds, method):
    ctx = mp.get_context(method)
    ctx.Process(target=_mp_noop).start()    # start forkserver outside the timing
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        p = ctx.Process(target=_mp_noop)
        p.start()
        p.join()
        out.append(time.perf_counter_ns() - t0)
    return out


def scale(count):
    """Create and park ``count`` kthreads, then stop them all.

    Samples: [create+park total ns, stop-all total ns, mean USS bytes of a sample].
    """
    import psutil
    import kproc
    with kproc.start(max_kthreads=count + 16):
        t0 = time.perf_counter_ns()
        tasks = []
        for i in range(count):
            t = kproc.kthread_create(noop, None, "scale/%d", i)
            kproc.kthread_park(t)
            tasks.append(t)
        created = time.perf_counter_ns() - t0
        step = max(1, count // 64)
        uss = [psutil.Process(t.pid).memory_full_info().uss for t in tasks[::step]]
        t0 = time.perf_counter_ns()
        for t in tasks:
            kproc.kthread_stop(t)
        stopped = time.perf_counter_ns() - t0
    return [created, stopped, sum(uss) / len(uss)]


CASES = {
    "pingpong_kproc_futex": lambda n: pingpong_kproc(n, "futex"),
    "pingpong_kproc_posix": lambda n: pingpong_kproc(n, "posix"),
    "pingpong_mp_event": pingpong_mp_event,
    "pingpong_posix_ipc": pingpong_posix_ipc,
    "pingpong_pipe": pingpong_pipe,
    "cycle_kproc": cycle_kproc,
    "cycle_kproc_2g": lambda n: cycle_kproc(n, 2),
    "cycle_fork": cycle_fork,
    "cycle_fork_2g": lambda n: cycle_fork(n, 2),
    "cycle_mp_fork": lambda n: cycle_mp(n, "fork"),
    "cycle_mp_forkserver": lambda n: cycle_mp(n, "forkserver"),
    "cycle_mp_spawn": lambda n: cycle_mp(n, "spawn"),
    "scale": scale,
}

from ._worker_cases import CASES as _WORKER_CASES  # noqa: E402
CASES.update(_WORKER_CASES)
from ._hotplug_cases import CASES as _HOTPLUG_CASES  # noqa: E402
CASES.update(_HOTPLUG_CASES)

if __name__ == "__main__":
    name, n = sys.argv[1], int(sys.argv[2])
    samples = CASES[name](n)
    sys.stdout.write(json.dumps(samples) + "\n")
