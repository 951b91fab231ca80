"""The hung-task check of a blocked control call (SPEC §5; kernel/hung_task.c).

kernel/hung_task.c check_hung_task(): a task blocked in TASK_UNINTERRUPTIBLE for
more than hung_task_timeout_secs (default CONFIG_DEFAULT_HUNG_TASK_TIMEOUT, 120;
0 disables the check) is reported once ("INFO: task %s:%d blocked for more than
%ld seconds.") and goes on waiting.
"""

import errno
import os
import threading
import time
import warnings

import pytest

import kproc
from kproc._core.hung_task import ENV, HungTask, hung_task_timeout
from fns import kthread as kfuncs
from fns import work as wfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def _hung_warnings(caught):
    return [w for w in caught if issubclass(w.category, kproc.KernelWarning)
            and "hung task" in str(w.message)]


def _blocked_call(call, caught, release):
    """Run ``call`` in a thread; wait for its hung-task warning, then ``release``."""
    result = {}
    th = threading.Thread(target=lambda: result.update(rc=call()))
    th.start()
    try:
        wait_until(lambda: _hung_warnings(caught), 5, message="no hung-task warning")
        assert th.is_alive(), "the call stopped waiting after its warning"
    finally:
        release()
        th.join(10)
    return result.get("rc")


def test_park_of_a_kthread_that_never_parks_warns_once_and_goes_on_waiting(rt, monkeypatch):
    monkeypatch.setenv(ENV, "0.5")
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.loop_until_stop, started, "noparker")
    kproc.wait_for_completion(started)
    pid = task.pid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        rc = _blocked_call(lambda: kproc.kthread_park(task), caught,
                           lambda: kproc.kthread_stop(task))
        waited = time.monotonic() - t0
    hung = _hung_warnings(caught)
    assert len(hung) == 1, [str(w.message) for w in hung]
    text = str(hung[0].message)
    for part in ("kthread_park()", "'noparker'", f"pid {pid}", "to park", "since",
                 "0.5 s", "still waiting"):
        assert part in text, (part, text)
    assert waited >= 0.5
    assert rc == -errno.ENOSYS          # it exited instead of parking


def test_blocked_flush_warns_naming_the_worker(rt, monkeypatch):
    monkeypatch.setenv(ENV, "0.3")
    w = kproc.kthread_create_worker(0, "stuckworker")
    started, release = kproc.Completion(), kproc.Completion()
    kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.block, (started, release)))
    kproc.wait_for_completion(started)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _blocked_call(lambda: kproc.kthread_flush_worker(w), caught,
                          lambda: kproc.complete(release))
        hung = _hung_warnings(caught)
        assert len(hung) == 1
        assert "kthread_flush_worker()" in str(hung[0].message)
        assert "'stuckworker'" in str(hung[0].message)
    finally:
        kproc.kthread_destroy_worker(w)


def test_blocked_stop_warns(rt, monkeypatch):
    monkeypatch.setenv(ENV, "0.3")
    comp = kproc.Completion()
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.wait_uninterruptible, (comp, started), "nostop")
    kproc.wait_for_completion(started)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = _blocked_call(lambda: kproc.kthread_stop(task), caught,
                           lambda: kproc.complete(comp))
    assert rc == 42
    assert "kthread_stop()" in str(_hung_warnings(caught)[0].message)


def test_the_check_warns_once_past_the_timeout(monkeypatch):
    monkeypatch.setenv(ENV, "5")
    long_ago = time.monotonic_ns() - 10 * 10**9
    check = HungTask("kthread_park", "to park", "kthread 'x' (pid 1)", since_ns=long_ago)
    with pytest.warns(kproc.KernelWarning, match=r"kthread_park\(\) blocked for more than 5 s"):
        assert check.check() is True
    assert check.check() is False                 # once per blocked call
    assert HungTask("a", "b", "c").check() is False   # not blocked long enough yet


def test_zero_turns_the_check_off(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    long_ago = time.monotonic_ns() - 10**12
    assert HungTask("kthread_park", "to park", "t", since_ns=long_ago).check() is False


def test_the_default_is_the_kernels_120_seconds(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert hung_task_timeout() == 120


@pytest.mark.parametrize("bad", ["soon", "-1", "nan"])
def test_a_bad_timeout_is_refused_clearly(monkeypatch, bad):
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ValueError, match=ENV):
        hung_task_timeout()
    assert os.environ[ENV] == bad


def test_blocked_freeze_warns_naming_the_kthread_that_does_not_freeze(rt, monkeypatch):
    monkeypatch.setenv(ENV, "0.3")
    started = kproc.Completion()
    task = kproc.kthread_run(wfuncs.freezable_but_stuck, started, "nofreeze")
    kproc.wait_for_completion(started)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(kproc.KthreadError):
                kproc.freeze_kthreads(timeout=1.0)
        hung = _hung_warnings(caught)
        assert len(hung) == 1
        assert "freeze_kthreads()" in str(hung[0].message)
        assert "'nofreeze'" in str(hung[0].message)
    finally:
        kproc.kthread_stop(task)
