"""Worker benchmark cases (run one per process through ``benchmarks._cases``).

Timestamps cross processes through a small file mapped by both sides
(CLOCK_MONOTONIC is one clock for every process), so one-way latencies are
measured without a return trip.  The caller runs on CPU 0, workers on CPU 1.
"""

import mmap
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

CALLER_CPU, PEER_CPU = 0, 1
_stamps = None


def _pin(cpu):
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


class Stamps:
    """A file-backed array of int64 slots shared by every process that maps it."""

    def __init__(self, path, n, create=False):
        if create:
            with open(path, "wb") as f:
                f.truncate(8 * n)
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 8 * n)
        self.view = memoryview(self.map).cast("q")

    def close(self):
        self.view.release()
        self.map.close()
        os.close(self.fd)


def _stamps_for(path, n):
    global _stamps
    if _stamps is None:
        _stamps = Stamps(path, n)
    return _stamps


# -- work functions (module level: passed by reference) ------------------------------

def stamp_and_complete(work):
    """data = (path, n, slot_holder_completion): write the start time, complete."""
    import kproc
    path, n, done = work.data
    t = time.monotonic_ns()
    s = _stamps_for(path, n)
    s.view[0] = t
    kproc.complete(done)


def stamp_index(work):
    """data = (path, n, i): the start time of delayed work i."""
    t = time.monotonic_ns()
    path, n, i = work.data
    _stamps_for(path, n).view[i] = t


def noop(work):
    pass


def producer(args):
    """A kthread producing ``count`` successful queues of its own works."""
    import kproc
    worker, works, count, go = args
    kproc.wait_for_completion(go)
    queued = 0
    q = kproc.kthread_queue_work
    while queued < count:
        for w in works:
            if q(worker, w):
                queued += 1
    return 0


def _ppe_start(_):
    return time.monotonic_ns()


def _ppe_noop(_):
    return None


def _ppe_init():
    _pin(PEER_CPU)


# -- dispatch latency ---------------------------------------------------------------

def dispatch_kproc(rounds):
    """Samples: [one-way ns..., then round-trip ns...] (two halves)."""
    import kproc
    _pin(CALLER_CPU)
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
        kproc.kthread_destroy_worker(worker)
        stamps.close()
    return one_way + round_trip


def dispatch_ppe(rounds):
    _pin(CALLER_CPU)
    one_way, round_trip = [], []
    with ProcessPoolExecutor(max_workers=1, initializer=_ppe_init) as ex:
        for i in range(rounds + 50):
            t0 = time.monotonic_ns()
            t1 = ex.submit(_ppe_start, None).result()
            t2 = time.monotonic_ns()
            if i >= 50:
                one_way.append(t1 - t0)
                round_trip.append(t2 - t0)
    return one_way + round_trip


def dispatch_pool(rounds):
    import multiprocessing as mp
    _pin(CALLER_CPU)
    one_way, round_trip = [], []
    with mp.get_context("fork").Pool(1, initializer=_ppe_init) as pool:
        for i in range(rounds + 50):
            t0 = time.monotonic_ns()
            t1 = pool.apply_async(_ppe_start, (None,)).get()
            t2 = time.monotonic_ns()
            if i >= 50:
                one_way.append(t1 - t0)
                round_trip.append(t2 - t0)
    return one_way + round_trip


# -- throughput ------------------------------------------------------------------------

def throughput_kproc(count, producers=1):
    """Samples: [elapsed ns for ``count`` no-op works through one worker]."""
    import kproc
    _pin(CALLER_CPU)
    with kproc.start():
        worker = kproc.kthread_create_worker_on_cpu(PEER_CPU, 0, "bench/%u")
        per = count // producers
        pools = [[kproc.KthreadWork(noop) for _ in range(256)] for _ in range(producers)]
        go = kproc.Completion()
        others = [kproc.kthread_run(producer, (worker, pools[i], per, go), "prod/%d", i)
                  for i in range(1, producers)]
        q = kproc.kthread_queue_work
        mine = pools[0]
        kproc.kthread_flush_worker(worker)
        t0 = time.monotonic_ns()
        kproc.complete_all(go)
        queued = 0
        while queued < per:
            for w in mine:
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


def throughput_ppe(count):
    _pin(CALLER_CPU)
    with ProcessPoolExecutor(max_workers=1, initializer=_ppe_init) as ex:
        ex.submit(_ppe_noop, None).result()
        t0 = time.monotonic_ns()
        futs = [ex.submit(_ppe_noop, None) for _ in range(count)]
        for f in futs:
            f.result()
        return [time.monotonic_ns() - t0, count]


def throughput_pool(count):
    import multiprocessing as mp
    _pin(CALLER_CPU)
    with mp.get_context("fork").Pool(1, initializer=_ppe_init) as pool:
        pool.apply(_ppe_noop, (None,))
        t0 = time.monotonic_ns()
        res = [pool.apply_async(_ppe_noop, (None,)) for _ in range(count)]
        for r in res:
            r.get()
        return [time.monotonic_ns() - t0, count]


# -- delayed-work lateness ---------------------------------------------------------------

SPACING_NS = 1_000_000


def lateness_kproc(count):
    """``count`` delayed works due 1 ms apart; samples: start - due (ns)."""
    import kproc
    _pin(CALLER_CPU)
    with tempfile.TemporaryDirectory() as tmp, kproc.start():
        path = os.path.join(tmp, "stamps")
        stamps = Stamps(path, count, create=True)
        worker = kproc.kthread_create_worker_on_cpu(PEER_CPU, 0, "bench/%u")
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
        # Sleep past the last expiry rather than poll: a poll would take the
        # worker lock (and fire timers) from CPU 0 while the worker runs them.
        time.sleep(max(0.0, (due[-1] - time.monotonic_ns()) / 1e9) + 0.05)
        kproc.kthread_flush_worker(worker)
        out = [stamps.view[i] - due[i] for i in range(count)]
        kproc.kthread_destroy_worker(worker)
        stamps.close()
    return out


def lateness_timer(count):
    """threading.Timer, one per due time, started up front; samples: start - due."""
    _pin(PEER_CPU)
    got = [0] * count
    base = time.monotonic_ns() + 200_000_000
    timers = []

    def fire(i):
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


def lateness_cyclictest(count):
    """cyclictest, same period and count, SCHED_OTHER, on the worker's CPU: its
    histogram (µs buckets) turned into samples (ns).  [] if not installed."""
    exe = "/usr/bin/cyclictest"
    if not os.path.exists(exe):
        return []
    out = subprocess.run([exe, "-q", "-t1", "-a", str(PEER_CPU), "-i", "1000",
                          "-l", str(count), "-h", "5000", "-m"],
                         capture_output=True, text=True, timeout=120)
    samples = []
    for line in out.stdout.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            samples += [int(parts[0]) * 1000] * int(parts[1])
    return samples


CASES = {
    "dispatch_kproc": dispatch_kproc,
    "dispatch_ppe": dispatch_ppe,
    "dispatch_pool": dispatch_pool,
    "throughput_kproc": throughput_kproc,
    "throughput_kproc_3": lambda n: throughput_kproc(n, 3),
    "throughput_ppe": throughput_ppe,
    "throughput_pool": throughput_pool,
    "lateness_kproc": lateness_kproc,
    "lateness_timer": lateness_timer,
    "lateness_cyclictest": lateness_cyclictest,
}
