"""Faults: SIGKILL of a kthread, of kthreadd, of the owner (SPEC §5); abandoned creates
are in test_create_handoff.py, for each hand-off."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import kproc
from fns import kthread as kfuncs
from helpers import kproc_shm_entries, process_gone, run_started, wait_until

pytestmark = pytest.mark.timeout(40)


def _started(fn, name, as_tuple=False):
    started = kproc.Completion()
    task = kproc.kthread_run(fn, (started,) if as_tuple else started, name)
    kproc.wait_for_completion(started)
    return task


def _killed_result_checks(task):
    t0 = time.monotonic()
    assert kproc.kthread_stop(task) == -errno.EOWNERDEAD
    assert time.monotonic() - t0 < 1.0
    assert task.exit_signal == signal.SIGKILL
    assert kproc.task_state(task) == kproc.TASK_DEAD


def test_sigkill_new_kthread(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "new")
    os.kill(task.pid, signal.SIGKILL)
    _killed_result_checks(task)


def test_sigkill_running_kthread(rt):
    task = _started(kfuncs.should_stop_loop_busy, "busy")
    os.kill(task.pid, signal.SIGKILL)
    _killed_result_checks(task)


def test_sigkill_sleeping_kthread_while_stop_waits(rt):
    task = run_started(kfuncs.msleep_then_return, (5000,), "sleepy")
    threading.Timer(0.2, os.kill, (task.pid, signal.SIGKILL)).start()
    _killed_result_checks(task)


def test_sigkill_parked_kthread(rt):
    task = _started(kfuncs.park_loop, "parked", as_tuple=True)
    assert kproc.kthread_park(task) == 0
    os.kill(task.pid, signal.SIGKILL)
    _killed_result_checks(task)


def test_park_waiter_returns_when_target_dies(rt):
    task = run_started(kfuncs.time_sleep, (30,), "noparks")
    threading.Timer(0.2, os.kill, (task.pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    assert kproc.kthread_park(task) == -errno.ENOSYS
    assert time.monotonic() - t0 < 1.5


def test_sigkill_kthreadd_ends_every_wait_and_kills_kthreads(rt):
    task = run_started(kfuncs.time_sleep, (30,), "orphan?")
    pid = task.pid
    c = kproc.Completion()
    errors = []

    def waiter():
        try:
            kproc.wait_for_completion(c)
        except kproc.KthreadError as exc:
            errors.append(exc.errno)
    th = threading.Thread(target=waiter)
    th.start()
    threading.Timer(0.2, os.kill, (rt.kthreadd_pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(kproc.KthreadError) as ei:
        kproc.kthread_stop(task)
    assert ei.value.errno == errno.ESRCH
    th.join(2)
    assert errors == [errno.ESRCH]
    assert time.monotonic() - t0 < 1.5
    wait_until(lambda: process_gone(pid), 2.0)
    with pytest.raises(kproc.KthreadError):
        kproc.kthread_create(kfuncs.ret_value, 0, "after")


OWNER_SCRIPT = textwrap.dedent("""
    import sys, os
    sys.path.insert(0, {tests!r})
    import kproc
    from fns import kthread as kfuncs
    rt = kproc.start(backend={backend!r})
    tasks = [kproc.kthread_run(kfuncs.loop_until_stop, None, "k%d" % i) for i in range(3)]
    parked = kproc.kthread_create(kfuncs.ret_value, 0, "p")
    kproc.kthread_park(parked)
    print(rt.kthreadd_pid, *[t.pid for t in tasks + [parked]], flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("backend", ["futex", "posix"])
def test_sigkill_of_owner_leaves_no_process_and_no_shm(backend):
    from kproc._core.native import load_mem_class
    if backend == "futex" and load_mem_class() is None:
        pytest.skip("futex backend needs the native extension")
    tests = os.path.dirname(os.path.dirname(kfuncs.__file__))
    script = OWNER_SCRIPT.format(tests=tests, backend=backend)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 5
        owner.kill()
        owner.wait()
        t0 = time.monotonic()

        def all_gone():
            return not any(psutil.pid_exists(p) and
                           psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
        wait_until(all_gone, 2.0, message="kthreadd or kthreads outlived their owner")
        assert time.monotonic() - t0 < 2.0
        assert kproc_shm_entries({owner.pid}) == set()
    finally:
        owner.kill()
        owner.wait()
        owner.stdin.close()
        owner.stdout.close()
