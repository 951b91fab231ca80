"""Module-level functions the experiments' kthreads and works run (passed by
reference, so kthreadd and the kthreads import this module)."""

from __future__ import annotations

import errno
import os
import time

import kproc


def _append(path: str, text: str) -> None:
    # One write of O_APPEND: lines from many processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read_ids(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def ret_data(data: int) -> int:
    return data


def sleeper(started: kproc.Completion) -> int:
    """Sleeps in schedule() (TASK_INTERRUPTIBLE) until stopped."""
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if not kproc.kthread_should_stop():
            kproc.schedule()
        kproc.set_current_state(kproc.TASK_RUNNING)
    return 0


def spinner(started: kproc.Completion) -> int:
    """Runs (TASK_RUNNING) until stopped."""
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        pass
    return 0


def parker(started: kproc.Completion) -> int:
    """Parks when asked, sleeps otherwise."""
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        if kproc.kthread_should_park():
            kproc.kthread_parkme()
            continue
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if not kproc.kthread_should_stop_or_park():
            kproc.schedule()
        kproc.set_current_state(kproc.TASK_RUNNING)
    return 0


def deaf(started: kproc.Completion) -> int:
    """Blocks in a foreign call: stop and park wait on it until it dies."""
    kproc.complete(started)
    time.sleep(3600)
    return 0


def work_block(work: kproc.KthreadWork) -> None:
    """data = (started, seconds): complete started, sleep."""
    started, seconds = work.data
    kproc.complete(started)
    time.sleep(seconds)


def work_record(work: kproc.KthreadWork) -> None:
    """data = (path, id): record that this work ran."""
    path, ident = work.data
    _append(path, ident)


def work_noop(work: kproc.KthreadWork) -> None:
    pass


def hammer(args: tuple[kproc.KthreadWorker, str, str, str, kproc.Completion]) -> int:
    """Queue new works onto a worker as fast as possible, recording each one
    whose queueing returned True (after it did: a kill in between leaves one
    work run but not recorded, which the experiment allows per kill)."""
    worker, queued, executed, prefix, started = args
    kproc.complete(started)
    n = 0
    while not kproc.kthread_should_stop():
        ident = f"{prefix}.{n}"
        n += 1
        try:
            work = kproc.KthreadWork(work_record, (executed, ident))
            if kproc.kthread_queue_work(worker, work):
                _append(queued, ident)
        except kproc.KthreadError:
            time.sleep(0.001)       # the work table is full for a moment
    return 0


def create_stop_loop(args: tuple[str, int]) -> int:
    """In a kthread: create, wake and stop kthreads until stopped; each must return
    its data.  Appends 'ok N' or 'bad ...' to the path."""
    path, tag = args
    n = bad = 0
    error = ""
    while not kproc.kthread_should_stop():
        try:
            t = kproc.kthread_run(ret_data, n % 1000, f"cs{tag}/%d", n % 1000)
            # kthread.c: stopped before threadfn ran, a kthread returns -EINTR
            if kproc.kthread_stop(t) not in (n % 1000, -errno.EINTR):
                bad += 1
        except kproc.KthreadError as exc:
            if kproc.kthread_should_stop():
                break       # our own kthread_stop() ended the create's killable wait
            bad += 1
            error = f" error {exc!r}"
        n += 1
    _append(path, f"{tag} {n} {bad}{error}")
    return 0


def queue_flush_cancel_loop(args: tuple[kproc.KthreadWorker, str, int]) -> int:
    """In a kthread: queue, flush and cancel works on a shared worker until stopped."""
    worker, path, tag = args
    n = bad = 0
    work = kproc.KthreadWork(work_noop)
    while not kproc.kthread_should_stop():
        kproc.kthread_queue_work(worker, work)
        if n % 2:
            kproc.kthread_flush_work(work)
        else:
            kproc.kthread_cancel_work_sync(work)
        if kproc.kthread_queue_work(worker, work) is not True:
            bad += 1        # after flush/cancel the work is idle: queueing must succeed
        kproc.kthread_flush_work(work)
        n += 1
    _append(path, f"{tag} {n} {bad}")
    return 0


def sane_workload(backend: str, tag: str) -> bool:
    """After an experiment: the runtime still does its job, or a fresh one does.

    Starts a runtime on ``backend`` if the experiment left none, then runs a
    kthread that returns its data, a worker flushing one work, and a completion.
    Return: True when every step gave the expected result.
    """
    from kproc._core import runtime as _rt   # the experiment may have replaced it
    if _rt._runtime is None or _rt._runtime.closed:
        kproc.start(backend=backend)
    t = kproc.kthread_run(ret_data, 7, f"{tag}-sane")
    w = kproc.kthread_create_worker(0, f"{tag}-sane-w")
    work = kproc.KthreadWork(work_noop)
    queued = kproc.kthread_queue_work(w, work)
    kproc.kthread_flush_work(work)
    kproc.kthread_destroy_worker(w)
    c = kproc.Completion()
    kproc.complete(c)
    return kproc.kthread_stop(t) == 7 and queued and kproc.try_wait_for_completion(c)
