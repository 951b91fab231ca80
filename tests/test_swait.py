"""Completion waiters: FIFO wake order and the state a waiter shows (SPEC §4 "Completions").

kernel/sched/completion.c: complete() "Threads will be awakened in the same order
in which they were queued"; do_wait_for_common() loops back to
__set_current_state() after a wake-up that did not complete the wait.
"""

import os
import signal
import threading

import pytest

import kproc
from kproc._sched.completion import completion_waiters
from fns import kthread as kfuncs
from helpers import run_started, wait_until

pytestmark = pytest.mark.timeout(60)

UNINT = kproc.TASK_UNINTERRUPTIBLE


def _queued(comp, tasks):
    """Wait until every task sleeps in TASK_UNINTERRUPTIBLE queued on ``comp``, in order."""
    pids = [t.pid for t in tasks]
    wait_until(lambda: all(kproc.task_state(t) == UNINT for t in tasks)
               and completion_waiters(comp) == pids, 5,
               message=lambda: f"queue {completion_waiters(comp)} != {pids}")


def _queue_waiters(comp, n, name="w"):
    tasks = []
    for i in range(n):
        tasks.append(run_started(kfuncs.wait_uninterruptible, (comp,), f"{name}{i}"))
        _queued(comp, tasks)
    return tasks


def _wake_order(comp, tasks):
    """complete() once per task; return the tasks in the order they ended."""
    order, left = [], list(tasks)
    for _ in tasks:
        kproc.complete(comp)
        done = wait_until(lambda: [t for t in left if t.exit_result is not None], 5)
        assert len(done) == 1, "one complete() let more than one waiter through"
        order.append(done[0])
        left.remove(done[0])
    return order


def test_complete_wakes_waiters_in_the_order_they_queued(rt):
    """completion.c complete(): swake_up_locked() wakes the head of x->wait."""
    comp = kproc.Completion()
    tasks = _queue_waiters(comp, 4)
    assert _wake_order(comp, tasks) == tasks
    for t in tasks:
        assert kproc.kthread_stop(t) == 42


def test_a_waiter_woken_without_its_count_keeps_its_place(rt):
    """A stray wake (and each liveness tick) re-waits without losing the place:
    do_wait_for_common() re-adds the waiter only if it left the list
    (__prepare_to_swait(): list_empty(&wait->task_list))."""
    comp = kproc.Completion()
    tasks = _queue_waiters(comp, 4)
    for t in reversed(tasks):
        assert kproc.wake_up_process(t) is True
    _queued(comp, tasks)
    assert _wake_order(comp, tasks) == tasks
    for t in tasks:
        kproc.kthread_stop(t)


def test_stray_wake_leaves_wait_for_completion_uninterruptible(rt):
    """A kthread in wait_for_completion() shows TASK_UNINTERRUPTIBLE as long as it
    waits: a wake_up_process() returns True, the wait goes on and the state is
    published again (completion.c do_wait_for_common(): __set_current_state(state)
    in the loop), so a second wake returns True too."""
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_uninterruptible, (comp,), "stray", UNINT)
    for _ in range(2):
        assert kproc.wake_up_process(task) is True
        _queued(comp, [task])
    assert task.exit_result is None
    kproc.complete(comp)
    assert kproc.kthread_stop(task) == 42


def test_stray_wake_leaves_wait_for_completion_killable_waiting(rt):
    comp = kproc.Completion()
    task = run_started(kfuncs.wait_killable, (comp,), "strayk", UNINT)
    assert kproc.wake_up_process(task) is True
    _queued(comp, [task])
    assert kproc.wake_up_process(task) is True
    kproc.complete(comp)
    assert kproc.kthread_stop(task) == 0


def test_a_waiter_killed_while_queued_does_not_take_a_count(rt):
    """A dead waiter's node is skipped: the count goes to the next one."""
    comp = kproc.Completion()
    first, second = _queue_waiters(comp, 2)
    os.kill(first.pid, signal.SIGKILL)
    wait_until(lambda: first.exit_result is not None)
    kproc.complete(comp)
    wait_until(lambda: second.exit_result is not None, 5)
    assert kproc.kthread_stop(second) == 42
    assert completion_waiters(comp) == []
    kproc.kthread_stop(first)


def test_a_waiter_that_times_out_leaves_the_queue(rt):
    comp = kproc.Completion()
    timed = run_started(kfuncs.wait_timeout_ret, (comp, 0.3), "wto", UNINT)
    forever, = _queue_waiters(comp, 1, "wf")
    wait_until(lambda: timed.exit_result is not None, 5)
    assert kproc.kthread_stop(timed) == 0
    assert completion_waiters(comp) == [forever.pid]
    kproc.complete(comp)
    assert kproc.kthread_stop(forever) == 42


def test_complete_all_releases_every_queued_waiter(rt):
    comp = kproc.Completion()
    tasks = _queue_waiters(comp, 3)
    kproc.complete_all(comp)
    for t in tasks:
        assert kproc.kthread_stop(t) == 42
    assert completion_waiters(comp) == []


def test_caller_threads_are_woken_in_queue_order(rt):
    """Threads of one process queue and are woken first in, first out too."""
    comp = kproc.Completion()
    me = os.getpid()
    order, threads = [], []
    for i in range(3):
        th = threading.Thread(target=lambda i=i: (kproc.wait_for_completion(comp),
                                                  order.append(i)))
        th.start()
        threads.append(th)
        wait_until(lambda: completion_waiters(comp) == [me] * (i + 1))
    for i in range(3):
        kproc.complete(comp)
        wait_until(lambda: len(order) == i + 1)
    for th in threads:
        th.join()
    assert order == [0, 1, 2]


def test_completion_done_stays_true_until_the_woken_waiter_takes_the_count(rt):
    """kernel/sched/completion.c: complete() does x->done++ and wakes the head waiter;
    the waiter decrements done itself when it runs (do_wait_for_common(): x->done--),
    so completion_done() ("return false if there are waiters ... done == 0") is true
    from the complete() until then.  The queued waiter is stopped (SIGSTOP) so it
    cannot run in between."""
    comp = kproc.Completion()
    task, = _queue_waiters(comp, 1)
    os.kill(task.pid, signal.SIGSTOP)
    try:
        kproc.complete(comp)
        assert kproc.completion_done(comp) is True
        assert completion_waiters(comp) == []           # no longer queued: woken
    finally:
        os.kill(task.pid, signal.SIGCONT)
    assert kproc.kthread_stop(task) == 42
    assert kproc.completion_done(comp) is False         # the waiter took it


def test_complete_all_keeps_completion_done_after_a_woken_waiter_passes(rt):
    """complete_all() sets done to UINT_MAX, which a waiter never decrements
    (completion.c: ``if (x->done != UINT_MAX) x->done--``); reinit makes it 0."""
    comp = kproc.Completion()
    task, = _queue_waiters(comp, 1)
    kproc.complete_all(comp)
    assert kproc.kthread_stop(task) == 42
    assert kproc.completion_done(comp) is True
    kproc.reinit_completion(comp)
    assert kproc.completion_done(comp) is False


@pytest.mark.timeout(120)
def test_more_sleeping_threads_than_the_old_node_table_keep_fifo_order(rt):
    """Every thread that can sleep has a queue node (one per thread id), so 300
    sleepers (the node table used to hold 256 and let the rest wait unqueued, in
    no order) are all queued and woken in order: completion.c complete() "Threads
    will be awakened in the same order in which they were queued"."""
    n = 300
    comp = kproc.Completion()
    me = os.getpid()
    order, threads = [], []
    for i in range(n):
        th = threading.Thread(target=lambda i=i: (kproc.wait_for_completion(comp),
                                                  order.append(i)), daemon=True)
        th.start()
        threads.append(th)
        wait_until(lambda: len(completion_waiters(comp)) == i + 1, 10,
                   message=lambda: f"waiter {i} is not queued")
    assert completion_waiters(comp) == [me] * n
    for i in range(n):
        kproc.complete(comp)
        wait_until(lambda: len(order) == i + 1, 10)
    for th in threads:
        th.join(10)
    assert order == list(range(n))
