"""KthreadPoolExecutor.shutdown() while the pool is live: calls in flight, other threads
submitting, waiting and iterating a map (SPEC §3 "Pools"; the semantics mirror
concurrent.futures.ProcessPoolExecutor.shutdown), and a broken pool's teardown that
leaves every other thread's warnings alone.
"""

import concurrent.futures as cf
import os
import signal
import threading
import warnings

import pytest

import kproc
from kproc._core.errors import KernelWarning
from kproc._pool import executor as E
from kproc._pool.executor import BrokenKthreadPool
from fns import pool as pf
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def _submitters(ex, n, accepted, refused, wait_results=False):
    """n threads submitting square(i) until the pool refuses; they keep what it took."""
    go = threading.Event()

    def run(k):
        i = 0
        go.wait()
        while True:
            try:
                fut = ex.submit(pf.square, k * 100_000 + i)
            except RuntimeError as exc:
                refused.append(str(exc))
                return
            accepted.append((k * 100_000 + i, fut))
            if wait_results and i % 7 == 0:
                try:
                    fut.result(timeout=20)
                except cf.CancelledError:
                    pass
            i += 1
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    return go, threads


def test_shutdown_while_other_threads_submit_waits_for_every_call_it_took(rt):
    """As ProcessPoolExecutor: a submit after shutdown() raises RuntimeError, every call
    accepted before it runs and shutdown(wait=True) returns after all of them."""
    ex = kproc.KthreadPoolExecutor()
    pids = [w.task.pid for w in ex._pool.engine.workers]
    accepted, refused = [], []
    go, threads = _submitters(ex, 4, accepted, refused)
    go.set()
    wait_until(lambda: len(accepted) > 2000, 20)
    ex.shutdown(wait=True)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(refused) == 4 and all("after shutdown" in r for r in refused)
    assert all(f.done() for _x, f in accepted)
    assert all(f.result(timeout=0) == x * x for x, f in accepted)
    for pid in pids:
        wait_until(lambda: pf.gone(pid), 5)


def test_shutdown_cancel_futures_while_threads_submit_and_wait(rt):
    """cancel_futures=True: every accepted call either ran or was cancelled before it
    started (a waiter gets CancelledError); none is left pending, nothing hangs."""
    ex = kproc.KthreadPoolExecutor()
    accepted, refused = [], []
    go, threads = _submitters(ex, 3, accepted, refused, wait_results=True)
    go.set()
    wait_until(lambda: len(accepted) > 1000, 20)
    ex.shutdown(wait=True, cancel_futures=True)
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    for x, f in accepted:
        assert f.done()
        assert f.cancelled() or f.result(timeout=0) == x * x


@pytest.mark.parametrize("cancel", [False, True])
def test_shutdown_while_another_thread_iterates_a_map(rt, cancel):
    """shutdown(wait=True) waits for a map's calls as for any future; with
    cancel_futures the map's iterator raises CancelledError at the first call that
    never started, after yielding every earlier result in order."""
    ex = kproc.KthreadPoolExecutor()
    got, errors, started = [], [], threading.Event()

    def consume():
        try:
            for v in ex.map(pf.sleep_for, [0.001] * 400, range(400)):
                got.append(v)
                started.set()
        except BaseException as exc:          # noqa: BLE001 (kept for the assertion)
            errors.append(exc)
    t = threading.Thread(target=consume)
    t.start()
    started.wait(10)
    ex.shutdown(wait=True, cancel_futures=cancel)
    t.join(20)
    assert not t.is_alive()
    assert got == list(range(len(got)))
    if cancel:
        assert len(got) < 400 and len(errors) == 1
        assert isinstance(errors[0], cf.CancelledError)
    else:
        assert got == list(range(400)) and errors == []


def test_a_map_not_iterated_still_runs_and_shutdown_waits_for_it(rt, tmp_path):
    """As ProcessPoolExecutor: map() submits every call at once; they run whether or
    not anyone iterates, and shutdown(wait=True) returns after the last."""
    log = str(tmp_path / "log")
    ex = kproc.KthreadPoolExecutor()
    ex.map(pf.log_call, [log] * 300, [f"m{i}" for i in range(300)])
    ex.shutdown(wait=True)
    assert sorted(line.split(":")[0] for line in pf.read_lines(log)) == \
        sorted(f"m{i}" for i in range(300))


def test_broken_pool_teardown_leaves_the_other_threads_warning_filters_alone(rt,
                                                                             monkeypatch):
    """The teardown of a broken pool drops the KernelWarnings of the works it discards
    in its own thread only: the process-wide filters are not swapped under the other
    threads (warnings.catch_warnings() is not thread-safe), so a filter another
    thread installs meanwhile survives, and no thread's KernelWarning is hidden."""
    ex = kproc.KthreadPoolExecutor()
    started, release = kproc.Completion(), kproc.Completion()
    ex.submit(pf.started_then_wait, started, release)
    kproc.wait_for_completion(started)
    inside, go = threading.Event(), threading.Event()
    real = E._destroy

    def slow_destroy(eng, w, worker):
        if w == 0:
            inside.set()
            go.wait(10)
        real(eng, w, worker)
    monkeypatch.setattr(E, "_destroy", slow_destroy)
    before = list(warnings.filters)
    os.kill(ex._pool.engine.workers[0].task.pid, signal.SIGKILL)   # broken: torn down
    assert inside.wait(10)                    # the collector is tearing down now
    try:
        assert warnings.filters == before
        with pytest.warns(KernelWarning, match="mine"):
            warnings.warn("mine", KernelWarning)
        warnings.filterwarnings("ignore", message="kept-by-another-thread")
    finally:
        go.set()
    ex.shutdown(wait=True)
    try:
        assert any(f[1] is not None and f[1].pattern == "kept-by-another-thread"
                   for f in warnings.filters)
    finally:
        warnings.filters[:] = before
    with pytest.raises(BrokenKthreadPool):
        ex.submit(pf.noop)
