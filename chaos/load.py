"""Load: 8 caller threads and 4 caller kthreads creating and stopping kthreads
for a while, beside kthreads of several processes queueing, flushing and
cancelling works on shared workers.  Every stop must return the kthread's
result, every idle work must be queueable again, every count exact."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time

import kproc

from . import fns
from .harness import Result


def load(r: Result, seconds: float, threads: int = 8, kthreads: int = 4,
         queuers: int = 3) -> None:
    tmp = tempfile.mkdtemp(prefix="kproc-chaos-")
    out = os.path.join(tmp, "counts")
    kproc.start(backend=r.backend, max_kthreads=512)
    stop = threading.Event()
    counts = [0] * threads
    bad = [0] * threads
    failures: list[str] = []

    def caller(i: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                t = kproc.kthread_run(fns.ret_data, n % 1000, "ld%d/%d", i, n % 1000)
                # kthread.c: stopped before threadfn ran, a kthread returns -EINTR
                if kproc.kthread_stop(t) not in (n % 1000, -errno.EINTR):
                    bad[i] += 1
            except kproc.KthreadError as exc:
                bad[i] += 1
                failures.append(f"caller thread {i}: {exc!r}")
            n += 1
        counts[i] = n
    workers = [kproc.kthread_create_worker(0, "ld-worker/%d", i) for i in range(2)]
    ks = [kproc.kthread_run(fns.create_stop_loop, (out, i), "ld-creator/%d", i)
          for i in range(kthreads)]
    qs = [kproc.kthread_run(fns.queue_flush_cancel_loop, (workers[i % 2], out, 100 + i),
                            "ld-queuer/%d", i) for i in range(queuers)]
    ths = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for th in ths:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in ths:
        th.join()
    results = [kproc.kthread_stop(t) for t in ks + qs]
    for w in workers:
        kproc.kthread_destroy_worker(w)
    kproc.shutdown()
    lines = fns.read_ids(out)
    os.unlink(out)
    os.rmdir(tmp)
    kcreates = sum(int(line.split()[1]) for line in lines if int(line.split()[0]) < 100)
    kbad = sum(int(line.split()[2]) for line in lines)
    cycles = sum(int(line.split()[1]) for line in lines if int(line.split()[0]) >= 100)
    r.trials = sum(counts) + kcreates + cycles
    r.errors += sum(bad) + kbad + sum(1 for x in results if x != 0)
    if len(lines) != kthreads + queuers:
        r.errors += 1
        r.note(f"{len(lines)} of {kthreads + queuers} caller kthreads reported")
    for text in failures[:3] + [line for line in lines if "error" in line][:3]:
        r.note(text)
    r.extra.update(thread_creates=sum(counts), kthread_creates=kcreates,
                   queue_cycles=cycles, wrong_results=sum(bad) + kbad)
