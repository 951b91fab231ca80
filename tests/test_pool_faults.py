"""KthreadPoolExecutor under faults: a dying worker or a failing initializer breaks the
pool at once (every pending and later future fails, nothing hangs), and no fault
leaves a process, a descriptor or a /dev/shm entry behind (SPEC §3 "Pools", §5).
"""

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time

import pytest

import kproc
from kproc._pool.collector import Watcher
from kproc._pool.executor import BrokenKthreadPool
from fns import pool as pf
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def test_broken_pool_error_is_a_broken_executor_not_exported():
    """SPEC §3 names no class for it: reachable on the executor module only."""
    assert issubclass(BrokenKthreadPool, cf.BrokenExecutor)
    assert "BrokenKthreadPool" not in kproc.__all__ and not hasattr(kproc, "BrokenKthreadPool")


@pytest.mark.parametrize("how", ["os._exit", "SIGKILL"])
def test_a_dying_worker_breaks_the_pool_at_once(rt, how):
    ex = kproc.KthreadPoolExecutor()
    pids = [w.task.pid for w in ex._pool.engine.workers]
    started, release = kproc.Completion(), kproc.Completion()
    running = ex.submit(pf.started_then_wait, started, release)
    kproc.wait_for_completion(started)
    t0 = time.monotonic()
    if how == "SIGKILL":
        victim = next(w.task.pid for w in ex._pool.engine.workers)
        os.kill(victim, signal.SIGKILL)
    else:
        ex.submit(pf.die, 3)
    pending = []
    for i in range(20):
        try:
            pending.append(ex.submit(pf.sleep_for, 0.2, i))
        except BrokenKthreadPool:
            break                    # the death was seen already: refused, as PPE does
    with pytest.raises(BrokenKthreadPool):
        running.result(timeout=5)
    assert time.monotonic() - t0 < 2
    for f in pending:
        assert f.done() or isinstance(f.exception(timeout=2), BrokenKthreadPool)
    with pytest.raises(BrokenKthreadPool):
        ex.submit(pf.noop)
    ex.shutdown(wait=True)
    for pid in pids:
        wait_until(lambda: pf.gone(pid))


def test_the_watcher_stopped_after_a_death_writes_to_no_reused_descriptor():
    """The watcher closes its descriptors when it sees a worker die; a stop() after
    that (the pool's teardown) must not write its byte through the old number, which
    by then may name a file the program opened since (here: a pipe put on it)."""
    class Engine:
        failed = []

        def fail(self, exc):
            self.failed.append(exc)

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    watcher = Watcher(Engine(), [child.pid], ["victim"], "test-watcher")
    watcher.start()
    child.wait(timeout=10)
    watcher.join(timeout=10)
    assert not watcher.is_alive() and len(Engine.failed) == 1
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wfd = watcher.wfd
    try:
        os.dup2(w, old_wfd)
        watcher.stop()
        with pytest.raises(BlockingIOError):
            os.read(r, 16)
    finally:
        for fd in {r, w, old_wfd}:
            os.close(fd)


def test_a_direct_waiter_is_released_when_its_worker_dies(rt):
    ex = kproc.KthreadPoolExecutor(cpus=[0])
    started, release = kproc.Completion(), kproc.Completion()
    fut = ex.submit(pf.started_then_wait, started, release)
    kproc.wait_for_completion(started)
    pid = ex._pool.engine.workers[0].task.pid
    killer = subprocess.Popen([sys.executable, "-c",
                               f"import os, time, signal; time.sleep(0.2); "
                               f"os.kill({pid}, signal.SIGKILL)"])
    t0 = time.monotonic()
    with pytest.raises(BrokenKthreadPool):
        fut.result()                     # no timeout: only the death can end it
    assert time.monotonic() - t0 < 2
    killer.wait()
    ex.shutdown()


def test_failing_initializer_breaks_the_pool(rt):
    ex = kproc.KthreadPoolExecutor(initializer=pf.init_fail)
    futs = []
    try:
        for i in range(10):
            futs.append(ex.submit(pf.square, i))
    except BrokenKthreadPool:
        pass                        # broke meanwhile: later submits raise, as PPE's do
    for f in futs:
        exc = f.exception(timeout=10)
        assert isinstance(exc, BrokenKthreadPool)
    wait_until(lambda: ex._pool.engine.broken is not None, 10)
    assert isinstance(ex._pool.engine.broken.__cause__, pf.Boom)
    with pytest.raises(BrokenKthreadPool):
        ex.submit(pf.noop)
    ex.shutdown()


def test_runtime_shutdown_fails_the_pending_calls(rt):
    ex = kproc.KthreadPoolExecutor()
    futs = [ex.submit(pf.sleep_for, 0.5, i) for i in range(6)]
    kproc.shutdown()
    for f in futs:
        assert isinstance(f.exception(timeout=5), (BrokenKthreadPool, kproc.KthreadError))
    ex.shutdown()


SCRIPT = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
import kproc
from fns import pool as pf
if __name__ == "__main__":
    kproc.start()
    ex = kproc.KthreadPoolExecutor()
    futs = [ex.submit(pf.big, 1 << 20) for _ in range(4)]
    futs += [ex.submit(pf.length, b"q" * (1 << 20)) for _ in range(4)]
    futs += [ex.submit(pf.sleep_for, 30) for _ in range(4)]
    print(kproc.current() is None, flush=True)
    print(" ".join(str(w.task.pid) for w in ex._pool.engine.workers), flush=True)
    time.sleep(60)
"""


def test_sigkill_of_the_caller_leaves_nothing(tmp_path):
    """SPEC §5: the caller killed with calls and large payloads in flight: no process,
    no /dev/shm entry."""
    before = set(os.listdir("/dev/shm"))
    p = subprocess.Popen([sys.executable, "-c",
                          SCRIPT.format(tests=os.path.dirname(__file__))],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "True"
    pids = [int(x) for x in p.stdout.readline().split()]
    p.kill()
    p.wait()
    p.stdout.close()
    wait_until(lambda: all(pf.gone(pid) for pid in pids), 3)
    # other users of this host may create entries meanwhile: only the child's count
    wait_until(lambda: not [n for n in set(os.listdir("/dev/shm")) - before
                            if str(p.pid) in n], 3)
