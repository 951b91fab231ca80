"""Module-level threadfns used by the tests (kthreads import them by reference)."""

import os
import signal
import time

import kproc


def ret_value(value):
    return value


def ret_none(_):
    return None


def complete_then_return(args):
    comp, value = args
    kproc.complete(comp)
    return value


def raise_error(msg):
    raise RuntimeError(msg)


def exit_with(value):
    kproc.kthread_exit(value)
    return -1  # not reached


def complete_and_exit(args):
    comp, value = args
    kproc.kthread_complete_and_exit(comp, value)


def loop_until_stop(started):
    """The canonical kthread loop: sleep interruptibly until stopped."""
    if started is not None:
        kproc.complete(started)
    n = 0
    while not kproc.kthread_should_stop():
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if not kproc.kthread_should_stop():
            kproc.schedule()
        kproc.set_current_state(kproc.TASK_RUNNING)
        n += 1
    return 7


def count_wakeups(args):
    """Count wake-ups (each consumes one 'kick' completion) until stopped."""
    kick, ack = args
    n = 0
    while not kproc.kthread_should_stop():
        if kproc.wait_for_completion_interruptible(kick) == 0:
            n += 1
            kproc.complete(ack)
    return n


def wait_interruptible(args):
    comp, started = args
    kproc.complete(started)
    return kproc.wait_for_completion_interruptible(comp)


def wait_killable(args):
    comp, started = args
    kproc.complete(started)
    return kproc.wait_for_completion_killable(comp)


def wait_uninterruptible(args):
    comp, started = args
    kproc.complete(started)
    kproc.wait_for_completion(comp)
    return 42


def msleep_then_return(args):
    ms, started = args
    kproc.complete(started)
    t0 = time.monotonic()
    kproc.msleep(ms)
    return int((time.monotonic() - t0) * 1000)


def msleep_interruptible_ret(args):
    ms, started = args
    kproc.complete(started)
    return kproc.msleep_interruptible(ms)


def schedule_timeout_state(args):
    state, seconds, started = args
    kproc.complete(started)
    kproc.set_current_state(state)
    left = kproc.schedule_timeout(seconds)
    return int(left * 1000)


def park_loop(args):
    """Runs, counting, and parks whenever asked, until stopped."""
    started, = args
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        if kproc.kthread_should_park():
            kproc.kthread_parkme()
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if not kproc.kthread_should_stop_or_park():
            kproc.schedule()
        kproc.set_current_state(kproc.TASK_RUNNING)
    return 3


def park_self(args):
    comp, = args
    rc = kproc.kthread_park(kproc.current())
    should = kproc.kthread_should_park()
    kproc.complete(comp)
    return rc * 10 + int(should)


def report_env(args):
    """Publish what the kthread sees through a completion-less return code."""
    key, expected_cwd, expected_path_entry = args
    ok = (os.environ.get(key) == "yes" and os.getcwd() == expected_cwd
          and expected_path_entry in __import__("sys").path)
    return 1 if ok else 0


def report_sched(_):
    return os.sched_getscheduler(0)


def affinity_mask(started):
    bits = 0
    for cpu in os.sched_getaffinity(0):
        bits |= 1 << cpu
    if started is not None:
        kproc.complete(started)
    kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
    while not kproc.kthread_should_stop():
        kproc.schedule()
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
    kproc.set_current_state(kproc.TASK_RUNNING)
    return bits


def data_identity(data):
    return 1 if kproc.kthread_data(kproc.current()) is data else 0


def stop_other(task):
    return kproc.kthread_stop(task)


def create_child(args):
    comp, = args
    done = kproc.Completion()
    child = kproc.kthread_run(complete_then_return, (done, 11), "grandchild")
    kproc.wait_for_completion(done)
    rc = kproc.kthread_stop(child)
    kproc.complete(comp)
    return rc


def create_and_hang(args):
    """Once ``go`` is completed, asks for a kthread (the test has stopped kthreadd
    by then, so the request stays queued); never returns."""
    go, = args
    kproc.wait_for_completion(go)
    kproc.kthread_create(ret_value, 1, "never-born")
    return 0


def create_then_die_before_the_wake(started):
    """Completes ``started``, queues a create request on the list (no spare:
    KPROC_SPARES=0), then is SIGKILLed where the creator wakes kthreadd: the
    request is queued and kthreadd was never woken for it.  Never returns."""
    from kproc._core.runtime import Runtime

    def die(self):
        os.kill(os.getpid(), signal.SIGKILL)
    Runtime.wake_kthreadd = die
    kproc.complete(started)
    kproc.kthread_create(ret_value, 1, "never-woken-for")
    return 0


def stop_self(_):
    try:
        kproc.kthread_stop(kproc.current())
    except kproc.KthreadError as exc:
        return -exc.errno
    return 0


def should_stop_loop_busy(started):
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        time.sleep(0.001)
    return 5


def time_sleep(args):
    seconds, started = args
    kproc.complete(started)
    time.sleep(seconds)
    return 9


def lost_wakeup_loop(args):
    """Sleeps for each 'flag' set by the caller; returns how many it consumed."""
    flag, ack = args
    n = 0
    while True:
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if kproc.kthread_should_stop():
            break
        if kproc.try_wait_for_completion(flag):
            kproc.set_current_state(kproc.TASK_RUNNING)
            n += 1
            kproc.complete(ack)
            continue
        kproc.schedule()
    kproc.set_current_state(kproc.TASK_RUNNING)
    return n


def ping_pong(args):
    ping, pong, rounds = args
    for _ in range(rounds):
        kproc.wait_for_completion(ping)
        kproc.complete(pong)
    return rounds


def schedule_uninterruptible(args):
    started, = args
    kproc.complete(started)
    kproc.set_current_state(kproc.TASK_UNINTERRUPTIBLE)
    kproc.schedule()
    return 6


def schedule_timeout_interruptible_ret(args):
    seconds, started = args
    kproc.complete(started)
    return int(kproc.schedule_timeout_interruptible(seconds) * 1000)


def wait_timeout_ret(args):
    comp, seconds, started = args
    kproc.complete(started)
    return int(kproc.wait_for_completion_timeout(comp, seconds) * 1000)
