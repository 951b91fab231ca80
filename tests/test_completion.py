"""Completions and sleeps (SPEC §3 "Completions", §4 stop vs. sleeps)."""

import errno
import gc
import pickle
import signal
import threading
import time

import pytest

import kproc
from fns import kthread as kfuncs
from helpers import run_started, wait_until

pytestmark = pytest.mark.timeout(30)


def test_complete_counts_like_the_kernel(rt):
    c = kproc.Completion()
    assert not kproc.completion_done(c)
    kproc.complete(c)
    kproc.complete(c)
    assert kproc.completion_done(c)
    assert kproc.wait_for_completion_timeout(c, 1) > 0
    assert kproc.try_wait_for_completion(c) is True
    assert kproc.try_wait_for_completion(c) is False
    assert kproc.wait_for_completion_timeout(c, 0.05) == 0


def test_complete_all_releases_present_and_future_waiters_until_reinit(rt):
    c = kproc.Completion()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        kproc.wait_for_completion_timeout(c, 5))) for _ in range(4)]
    for t in threads:
        t.start()
    kproc.complete_all(c)
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r > 0 for r in results)
    for _ in range(3):
        kproc.wait_for_completion(c)          # future waiters pass too
    kproc.reinit_completion(c)
    assert kproc.try_wait_for_completion(c) is False


def test_init_completion_resets(rt):
    c = kproc.Completion()
    kproc.complete(c)
    kproc.init_completion(c)
    assert not kproc.completion_done(c)


def test_completion_crosses_processes_both_ways(rt):
    ping, pong = kproc.Completion(), kproc.Completion()
    task = kproc.kthread_run(kfuncs.ping_pong, (ping, pong, 200), "pp")
    for _ in range(200):
        kproc.complete(ping)
        kproc.wait_for_completion(pong)
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 200


def test_stop_interrupts_wait_for_completion_interruptible(rt):
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_interruptible, (comp,), "wi", kproc.TASK_INTERRUPTIBLE)
    assert kproc.kthread_stop(task) == -512          # -ERESTARTSYS


def test_stop_does_not_end_wait_for_completion_killable(rt):
    """kthread_stop()'s TIF_NOTIFY_SIGNAL is a pending signal, not a fatal one:
    completion.c do_wait_for_common() checks signal_pending_state(TASK_KILLABLE),
    which only fatal_signal_pending() satisfies, so the wait goes on until
    completed (kthread.c 6.15 kthread_stop(): set_tsk_thread_flag(k,
    TIF_NOTIFY_SIGNAL))."""
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_killable, (comp,), "wk", kproc.TASK_UNINTERRUPTIBLE)
    timer = threading.Timer(0.3, kproc.complete, (comp,))
    timer.start()
    t0 = time.monotonic()
    assert kproc.kthread_stop(task) == 0
    assert time.monotonic() - t0 >= 0.2
    timer.join()


def test_interruptible_wait_that_completes_returns_zero(rt):
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_interruptible, (comp,), "wi0")
    kproc.complete(comp)
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 0


def test_stop_waits_out_an_uninterruptible_wait_for_completion(rt):
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_uninterruptible, (comp,), "wu", kproc.TASK_UNINTERRUPTIBLE)
    timer = threading.Timer(0.3, kproc.complete, (comp,))
    timer.start()
    t0 = time.monotonic()
    assert kproc.kthread_stop(task) == 42
    assert time.monotonic() - t0 >= 0.2
    timer.join()


def test_stop_waits_out_msleep(rt):
    task = run_started(kfuncs.msleep_then_return, (400,), "ms", kproc.TASK_UNINTERRUPTIBLE)
    assert kproc.kthread_stop(task) >= 400


def test_stop_cuts_msleep_interruptible_short(rt):
    task = run_started(kfuncs.msleep_interruptible_ret,
                       (10_000,), "msi", kproc.TASK_INTERRUPTIBLE)
    t0 = time.monotonic()
    left = kproc.kthread_stop(task)
    assert time.monotonic() - t0 < 1.0
    assert 8_000 < left <= 10_000


def test_stop_cuts_schedule_timeout_interruptible_short(rt):
    task = run_started(kfuncs.schedule_timeout_state,
                       (kproc.TASK_INTERRUPTIBLE, 10.0), "sti", kproc.TASK_INTERRUPTIBLE)
    assert kproc.kthread_stop(task) > 8000


def test_stop_ends_schedule_timeout_uninterruptible_with_the_time_left(rt):
    """kthread_stop() wakes the task with wake_up_process() (kthread.c 6.15
    kthread_stop()), which ends a schedule_timeout() in TASK_UNINTERRUPTIBLE;
    schedule_timeout() returns the time left (kernel/time/sleep_timeout.c)."""
    task = run_started(kfuncs.schedule_timeout_state,
                       (kproc.TASK_UNINTERRUPTIBLE, 10.0), "stu", kproc.TASK_UNINTERRUPTIBLE)
    t0 = time.monotonic()
    assert kproc.kthread_stop(task) > 8000
    assert time.monotonic() - t0 < 2


def test_stop_ends_an_untimed_schedule_in_task_uninterruptible(rt):
    """kthread_stop()'s wake_up_process() ends a schedule() in TASK_UNINTERRUPTIBLE."""
    task = run_started(kfuncs.schedule_uninterruptible, (), "su", kproc.TASK_UNINTERRUPTIBLE)
    assert kproc.kthread_stop(task) == 6


def test_stop_cuts_schedule_timeout_interruptible_short_with_the_time_left(rt):
    """schedule_timeout_interruptible() sleeps in TASK_INTERRUPTIBLE: kthread_stop()
    ends it (signal_pending() through TIF_NOTIFY_SIGNAL) with the time left."""
    task = run_started(kfuncs.schedule_timeout_interruptible_ret, (10.0,), "stir",
                       kproc.TASK_INTERRUPTIBLE)
    assert kproc.kthread_stop(task) > 8000


def test_stop_waits_out_wait_for_completion_timeout(rt):
    """wait_for_completion_timeout() waits in TASK_UNINTERRUPTIBLE and loops until
    done or timed out (completion.c do_wait_for_common()): stop's wake does not
    end it."""
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_timeout_ret, (comp, 0.4), "wto", kproc.TASK_UNINTERRUPTIBLE)
    t0 = time.monotonic()
    assert kproc.kthread_stop(task) == 0            # timed out: 0 left
    assert time.monotonic() - t0 > 0.2


def test_wake_up_process_ends_schedule_timeout_early(rt):
    task = run_started(kfuncs.schedule_timeout_state,
                       (kproc.TASK_UNINTERRUPTIBLE, 10.0), "stw", kproc.TASK_UNINTERRUPTIBLE)
    assert kproc.wake_up_process(task) is True
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) > 8000


def test_foreign_blocking_call_is_not_interrupted(rt):
    task = run_started(kfuncs.time_sleep, (0.3,), "foreign")
    t0 = time.monotonic()
    assert kproc.kthread_stop(task) == 9
    assert time.monotonic() - t0 > 0.15


def test_stale_completion_raises(rt):
    c = kproc.Completion()
    copy = pickle.loads(pickle.dumps(c))
    kproc.complete(copy)
    assert kproc.try_wait_for_completion(c)
    del c
    gc.collect()
    kproc.Completion()                      # frees the collected slot
    with pytest.raises(kproc.KthreadError) as ei:
        kproc.complete(copy)
    assert ei.value.errno == errno.ESRCH


def test_non_completion_arguments(rt):
    for fn in (kproc.complete, kproc.complete_all, kproc.wait_for_completion,
               kproc.try_wait_for_completion, kproc.completion_done, kproc.reinit_completion):
        with pytest.raises(TypeError):
            fn(object())


def test_signal_handler_exception_interrupts_a_wait(rt):
    c = kproc.Completion()

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            kproc.wait_for_completion(c)
        assert time.monotonic() - t0 < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    kproc.complete(c)
    kproc.wait_for_completion(c)              # still usable afterwards


def test_msleep_outside_a_kthread_sleeps(rt):
    t0 = time.monotonic()
    kproc.msleep(50)
    assert time.monotonic() - t0 >= 0.049
