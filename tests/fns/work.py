"""Module-level work functions and threadfns for the worker tests.

Works report what they did by appending a line to a file (one ``write`` on an
O_APPEND descriptor, so lines from any process never interleave) or by
completing a Completion passed in ``work.data``.
"""

import os
import time

import kproc


def append_line(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def noop(work):
    pass


def log(work):
    """data = (path, tag): append tag."""
    path, tag = work.data
    append_line(path, tag)


def log_pid(work):
    """data = (path, tag): append tag:pid."""
    path, tag = work.data
    append_line(path, f"{tag}:{os.getpid()}")


def complete_it(work):
    kproc.complete(work.data)


def block(work):
    """data = (started, release): complete started, wait for release."""
    started, release = work.data
    kproc.complete(started)
    kproc.wait_for_completion(release)


def block_then_log(work):
    """data = (path, tag, started, release)."""
    path, tag, started, release = work.data
    kproc.complete(started)
    kproc.wait_for_completion(release)
    append_line(path, tag)


def boom(work):
    raise ValueError(f"boom {work.data}")


class Unpicklable(Exception):
    """An exception that cannot travel: it holds a lock."""

    def __init__(self, msg):
        import threading           # only this exception needs it
        super().__init__(msg)
        self.lock = threading.Lock()


def boom_unpicklable(work):
    raise Unpicklable(f"cannot travel {work.data}")


def requeue_self(work):
    """data = path: log 'r', sleep a little, queue itself again (forever)."""
    append_line(work.data, "r")
    time.sleep(0.002)
    kproc.kthread_queue_work(work.worker, work)


def flush_own_worker(work):
    """data = path: flushing our own worker must not hang; log 'returned'."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kproc.kthread_flush_worker(work.worker)
    append_line(work.data, "returned:" + ",".join(type(w.message).__name__ for w in caught))


def queue_other(work):
    """data = (worker, other_work): queue another work from inside a work."""
    worker, other = work.data
    kproc.kthread_queue_work(worker, other)


def mark_current(work):
    """data = (path, tag): log whether current_work names this very work."""
    path, tag = work.data
    append_line(path, f"{tag}:{work.worker.current_work == work}")


# -- threadfns --------------------------------------------------------------------

def queue_from_kthread(args):
    """Queue a work on a worker from a kthread; return 1 if queued."""
    worker, work = args
    return 1 if kproc.kthread_queue_work(worker, work) else 0


def cancel_from_kthread(args):
    """kthread_cancel_work_sync from a kthread; return its result (0/1)."""
    work, started = args
    kproc.complete(started)
    return 1 if kproc.kthread_cancel_work_sync(work) else 0


def flush_from_kthread(args):
    """kthread_flush_work from a kthread; return 1 once it returned."""
    work, started = args
    kproc.complete(started)
    kproc.kthread_flush_work(work)
    return 1


def hammer_mod_cancel(args):
    """mod/cancel the same delayed work in a loop (the 2021 race); return iterations."""
    worker, dwork, n, go = args
    kproc.wait_for_completion(go)
    for i in range(n):
        if i % 2:
            kproc.kthread_cancel_delayed_work_sync(dwork)
        else:
            kproc.kthread_mod_delayed_work(worker, dwork, 0.0005 * (i % 3))
    return n


def freezable_counter(args):
    """set_freezable, then loop: bump a counter file, try_to_freeze, until stopped."""
    path, started = args
    kproc.set_freezable()
    kproc.complete(started)
    n = 0
    while not kproc.kthread_should_stop():
        n += 1
        append_line(path, str(n))
        kproc.try_to_freeze()
        kproc.schedule_timeout_interruptible(0.005)
    return 0


def plain_counter(args):
    """Not freezable: bump a counter until stopped."""
    path, started = args
    kproc.complete(started)
    n = 0
    while not kproc.kthread_should_stop():
        n += 1
        append_line(path, str(n))
        kproc.schedule_timeout_interruptible(0.005)
    return 0


def freezable_should_stop_loop(args):
    """The kthread_freezable_should_stop() loop; log was_frozen each round."""
    path, started = args
    kproc.set_freezable()
    kproc.complete(started)
    while True:
        stop, was_frozen = kproc.kthread_freezable_should_stop()
        if was_frozen:
            append_line(path, "was_frozen")
        if stop:
            return 7
        kproc.schedule_timeout_interruptible(0.005)


def freezable_but_stuck(started):
    """Freezable, but never reaches a freeze point (a foreign sleep) until stopped."""
    kproc.set_freezable()
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        time.sleep(0.01)
    return 0


def in_kthread_freezer_calls(started):
    """set_freezable() / freezing() / try_to_freeze() return values outside a freeze."""
    a = kproc.set_freezable()
    b = kproc.freezing()
    c = kproc.try_to_freeze()
    kproc.complete(started)
    return (a << 2) | (b << 1) | c
