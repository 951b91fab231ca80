"""KthreadPoolExecutor: the concurrent.futures executor semantics (SPEC §3 "Pools").

Mirrors what CPython's Lib/test/test_concurrent_futures checks for an
executor (submit, map with timeouts and chunksize, cancel, shutdown with and
without wait and cancel_futures, exceptions with their remote tracebacks,
as_completed/wait, initializer), written for kproc's pool.
"""

import concurrent.futures as cf
import json
import os
import time

import psutil
import pytest

import kproc
from fns import pool as pf
from helpers import live_kthreads, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ex(rt):
    pool = kproc.KthreadPoolExecutor()
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def blocker(ex):
    """Submit a call that blocks its worker; return (future, release completion)."""
    started, release = kproc.Completion(), kproc.Completion()
    fut = ex.submit(pf.started_then_wait, started, release, "released")
    kproc.wait_for_completion(started)
    return fut, release


def fill(ex):
    """Block every worker of ``ex``; return the release completions and futures."""
    got = [blocker(ex) for _ in range(ex._max_workers)]
    return [f for f, _ in got], [r for _, r in got]


# -- the executor and its workers -----------------------------------------------------

def test_is_an_executor_and_submit_returns_a_future(ex):
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(pf.add, 1, b=2)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=5) == 3
    assert fut.done() and not fut.cancelled() and fut.exception() is None


def test_workers_are_named_kthread_workers_one_per_housekeeping_cpu(rt, ex):
    hk = sorted(kproc.housekeeping_cpumask())
    fs = [ex.submit(pf.where) for _ in range(50)]
    seen = {tuple(aff) for _pid, aff in (f.result() for f in fs)}
    assert seen <= {(c,) for c in hk}
    names = sorted(kproc.get_kthread_comm(w.task) for w in ex._pool.engine.workers)
    assert names == sorted(f"kpool/{c}" for c in hk)
    for w in ex._pool.engine.workers:
        assert kproc.kthread_is_per_cpu(w.task)
        assert psutil.Process(w.task.pid).name() == kproc.get_kthread_comm(w.task)


def test_prefix_cpus_and_round_robin_beyond_the_cpu_count(rt):
    with kproc.KthreadPoolExecutor(3, cpus=[0], thread_name_prefix="hash") as ex:
        tasks = [w.task for w in ex._pool.engine.workers]
        assert [kproc.get_kthread_comm(t) for t in tasks] == ["hash/0"] * 3
        assert all(os.sched_getaffinity(t.pid) == {0} for t in tasks)
        assert sorted(set(ex.map(pf.square, range(20)))) == sorted({i * i for i in range(20)})


def test_bad_arguments_raise_before_anything_is_created(rt):
    before = len(live_kthreads(rt))
    with pytest.raises(ValueError):
        kproc.KthreadPoolExecutor(0)
    with pytest.raises(TypeError):
        kproc.KthreadPoolExecutor("2")
    with pytest.raises(ValueError):
        kproc.KthreadPoolExecutor(cpus=[])
    with pytest.raises(ValueError):
        kproc.KthreadPoolExecutor(cpus=[4096])
    with pytest.raises(TypeError):
        kproc.KthreadPoolExecutor(initializer=3)
    with pytest.raises(TypeError):
        kproc.KthreadPoolExecutor(initializer=lambda: None)
    assert len(live_kthreads(rt)) == before


def test_unpicklable_function_or_argument_raises_at_submit(ex):
    """SPEC §5: a function that cannot travel fails at once in the caller (TypeError)."""
    with pytest.raises(TypeError, match="module level"):
        ex.submit(lambda: 1)
    with pytest.raises(TypeError, match="pickled"):
        ex.submit(pf.echo, lambda: 1)
    with pytest.raises(TypeError, match="pickled"):
        ex.map(pf.echo, [1, lambda: 1, 3])          # map() submits nothing then
    with pytest.raises(TypeError, match="module level"):
        ex.map(lambda x: x, [1])
    assert ex.submit(pf.echo, 5).result() == 5
    assert ex._pool.engine.live == 0


# -- results and exceptions ------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 100, 8000, 9000, 3 << 20])
def test_results_and_arguments_of_any_size(ex, size):
    assert ex.submit(pf.length, b"a" * size).result(timeout=20) == size
    assert ex.submit(pf.big, size).result(timeout=20) == b"x" * size


def _payload_fds(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "kproc-pool-payload" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                out.append(fd)
        except OSError:
            pass
    return out


def test_large_payloads_leave_no_descriptor_behind(ex):
    """The side channel's memfds are closed once read (the worker's at its next call)."""
    for _ in range(5):
        assert len(ex.submit(pf.big, 1 << 20).result()) == 1 << 20
        assert ex.submit(pf.length, b"z" * (1 << 20)).result() == 1 << 20
    assert _payload_fds(os.getpid()) == []
    ex.map(pf.noop, range(100))                 # every worker moves past its last big result
    list(ex.map(pf.echo, range(200)))
    for w in ex._pool.engine.workers:
        assert _payload_fds(w.task.pid) == []


def test_exception_keeps_the_remote_traceback(ex):
    fut = ex.submit(pf.boom, "bad thing")
    with pytest.raises(pf.Boom, match="bad thing") as info:
        fut.result()
    cause = info.value.__cause__
    assert type(cause).__name__ == "_RemoteTraceback"
    assert isinstance(cause, cf.process._RemoteTraceback)
    assert "in boom" in str(cause) and "raise Boom(msg)" in str(cause)
    assert isinstance(fut.exception(), pf.Boom)


@pytest.mark.parametrize("kind,exc", [("exit", SystemExit), ("int", KeyboardInterrupt)])
def test_base_exceptions_come_back_as_exceptions(ex, kind, exc):
    """As ProcessPoolExecutor: BaseException in the call is the future's exception."""
    assert isinstance(ex.submit(pf.raise_base, kind).exception(timeout=5), exc)
    assert ex.submit(pf.echo, 1).result() == 1        # the worker goes on


def test_unpicklable_result_or_exception_becomes_an_error(ex):
    with pytest.raises(Exception, match="refuses to be pickled"):
        ex.submit(pf.return_unpicklable).result()
    with pytest.raises(Exception, match="refuses to be pickled"):
        ex.submit(pf.raise_unpicklable).result()


# -- map ------------------------------------------------------------------------------

def test_map_in_order_with_several_iterables_and_chunks(ex):
    assert list(ex.map(pf.square, range(100))) == [i * i for i in range(100)]
    assert list(ex.map(pf.add, range(10), range(0, 100, 10))) == \
        [i + 10 * i for i in range(10)]
    for chunksize in (2, 7, 100, 1000):
        assert list(ex.map(pf.square, range(50), chunksize=chunksize)) == \
            [i * i for i in range(50)]
    assert list(ex.map(pf.square, [])) == []


def test_map_bad_chunksize(ex):
    with pytest.raises(ValueError):
        ex.map(pf.square, range(3), chunksize=0)


def test_map_raises_the_exception_at_its_place(ex):
    it = ex.map(pf.boom, ["a"])
    with pytest.raises(pf.Boom):
        next(it)
    results = ex.map(pf.echo_or_boom, [1, 2, "boom", 4])
    assert next(results) == 1 and next(results) == 2
    with pytest.raises(pf.Boom):
        next(results)


def test_map_timeout_raises_and_cancels_the_rest(ex):
    futs, releases = fill(ex)
    it = ex.map(pf.echo, range(4), timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        list(it)
    assert time.monotonic() - t0 < 2
    for r in releases:
        kproc.complete(r)
    assert [f.result(timeout=5) for f in futs] == ["released"] * len(futs)


# -- cancel ---------------------------------------------------------------------------

def test_cancel_a_queued_call_it_never_runs(ex, tmp_path):
    """kthread_cancel_work_sync() of a pending work returns True (kthread.c 6.15)."""
    log = str(tmp_path / "log")
    futs, releases = fill(ex)
    queued = [ex.submit(pf.log_call, log, f"c{i}") for i in range(6)]
    assert all(not f.running() for f in queued)
    assert queued[2].cancel() and queued[4].cancel()
    assert queued[2].cancelled() and queued[2].done()
    with pytest.raises(cf.CancelledError):
        queued[2].result()
    for r in releases:
        kproc.complete(r)
    done = [f.result(timeout=5) for i, f in enumerate(queued) if i not in (2, 4)]
    assert done == ["c0", "c1", "c3", "c5"]
    tags = [line.split(":")[0] for line in pf.read_lines(log)]
    assert sorted(tags) == ["c0", "c1", "c3", "c5"]


def test_cancel_fails_once_the_call_runs_and_does_not_wait(ex):
    fut, release = blocker(ex)
    assert fut.running()
    t0 = time.monotonic()
    assert not fut.cancel()
    assert time.monotonic() - t0 < 0.5
    assert fut.running() and not fut.cancelled()
    kproc.complete(release)
    assert fut.result(timeout=5) == "released"
    assert not fut.cancel()                  # finished


def test_a_cancelled_slot_is_reused(ex):
    futs, releases = fill(ex)
    many = [ex.submit(pf.square, i) for i in range(200)]
    cancelled = {i for i, f in enumerate(many) if i % 3 == 0 and f.cancel()}
    for r in releases:
        kproc.complete(r)
    for i, f in enumerate(many):
        if i in cancelled:
            assert f.cancelled()
        else:
            assert f.result(timeout=10) == i * i


# -- shutdown -------------------------------------------------------------------------

def test_shutdown_waits_for_the_calls_and_removes_the_workers(rt):
    ex = kproc.KthreadPoolExecutor()
    pids = [w.task.pid for w in ex._pool.engine.workers]
    fs = [ex.submit(pf.sleep_for, 0.05, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in fs] == list(range(6))
    for pid in pids:
        wait_until(lambda: pf.gone(pid))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pf.noop)
    ex.shutdown()                             # again: nothing happens


def test_shutdown_without_wait_returns_at_once_and_the_calls_still_finish(rt):
    ex = kproc.KthreadPoolExecutor()
    fut, release = blocker(ex)
    later = ex.submit(pf.echo, 7)
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.5
    kproc.complete(release)
    assert fut.result(timeout=5) == "released" and later.result(timeout=5) == 7
    ex._pool.join()


def test_shutdown_cancel_futures_cancels_what_has_not_started(rt):
    ex = kproc.KthreadPoolExecutor()
    futs, releases = fill(ex)
    queued = [ex.submit(pf.echo, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    for r in releases:
        kproc.complete(r)
    assert all(f.result(timeout=5) == "released" for f in futs)
    ex._pool.join()


def test_context_manager_shuts_down(rt):
    with kproc.KthreadPoolExecutor() as ex:
        fut = ex.submit(pf.sleep_for, 0.05, "x")
    assert fut.done() and fut.result() == "x"
    with pytest.raises(RuntimeError):
        ex.submit(pf.noop)


# -- wait, as_completed, callbacks ----------------------------------------------------

def test_as_completed_and_wait(ex):
    futs, releases = fill(ex)
    quick = [ex.submit(pf.square, i) for i in range(3)]
    done, not_done = cf.wait(futs + quick, timeout=0.1)
    assert set(futs) <= not_done
    for r in releases:
        kproc.complete(r)
    got = [f.result() for f in cf.as_completed(futs + quick, timeout=10)]
    assert sorted(map(str, got)) == sorted(map(str, ["released"] * len(futs) + [0, 1, 4]))
    done, not_done = cf.wait(futs + quick, return_when=cf.ALL_COMPLETED, timeout=5)
    assert not not_done


def test_wait_first_completed_and_first_exception(ex):
    fut, release = blocker(ex)
    bad = ex.submit(pf.boom, "x")
    done, _ = cf.wait([fut, bad], return_when=cf.FIRST_EXCEPTION, timeout=10)
    assert bad in done and fut not in done
    done, _ = cf.wait([fut, ex.submit(pf.echo, 1)], return_when=cf.FIRST_COMPLETED, timeout=10)
    assert fut not in done
    kproc.complete(release)
    fut.result(timeout=5)


def test_done_callbacks_run_without_anyone_waiting(ex):
    seen = []
    fut = ex.submit(pf.square, 9)
    fut.add_done_callback(lambda f: seen.append(f.result()))
    wait_until(lambda: seen == [81], timeout=5)


def test_result_timeout(ex):
    fut, release = blocker(ex)
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        fut.exception(timeout=0.05)
    kproc.complete(release)
    assert fut.result(timeout=5) == "released"


# -- initializer -----------------------------------------------------------------------

def test_initializer_runs_once_in_each_worker_before_any_call(rt, tmp_path):
    log = str(tmp_path / "init")
    with kproc.KthreadPoolExecutor(initializer=pf.init_log, initargs=(log,)) as ex:
        pids = sorted(w.task.pid for w in ex._pool.engine.workers)
        results = [ex.submit(pf.initialized) for _ in range(20)]
        for f in results:
            got = f.result(timeout=10)
            assert len(got) == 1                 # once per worker process
    lines = pf.read_lines(log)
    assert sorted(int(x.split(":")[1]) for x in lines) == pids


def test_pool_calls_are_traced_on_the_worker_tracks(tmp_path):
    path = str(tmp_path / "run.json")
    with kproc.start(trace=path):
        with kproc.KthreadPoolExecutor(cpus=[0]) as ex:
            assert ex.submit(pf.square, 3).result() == 9
    with open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = {e.get("args", {}).get("name") for e in events if e.get("ph") == "M"}
    assert "kpool/0" in names
    assert any(e.get("name") == "run_slot" and e.get("ph") == "B" for e in events)


# -- map's calls (no Future each; a worker's drain runs them in ticket order) ----------

def test_map_calls_run_in_order_on_one_worker_and_many_at_once(rt, tmp_path):
    """One worker runs a map's calls in the order they were submitted (FIFO, as a
    worker runs its works: kthread.c kthread_worker_fn), well past its slot count."""
    log = str(tmp_path / "log")
    with kproc.KthreadPoolExecutor(1, cpus=[0]) as ex:
        tags = [f"t{i}" for i in range(300)]
        assert list(ex.map(pf.log_call, [log] * 300, tags)) == tags
    assert [line.split(":")[0] for line in pf.read_lines(log)] == tags


def test_map_cancelled_by_its_timeout_never_runs_the_rest(ex, tmp_path):
    """As Executor.map: the call that timed out and every later one not started are
    cancelled; none of them ever runs."""
    log = str(tmp_path / "log")
    futs, releases = fill(ex)
    it = ex.map(pf.log_call, [log] * 50, [f"m{i}" for i in range(50)], timeout=0.1)
    with pytest.raises(cf.TimeoutError):
        next(it)
    for r in releases:
        kproc.complete(r)
    assert [f.result(timeout=5) for f in futs] == ["released"] * len(futs)
    ex.shutdown(wait=True)
    assert pf.read_lines(log) == []


def test_map_of_slow_calls_keeps_every_worker_busy(ex):
    """A map's iterator feeds its calls to the workers off its own CPU while it reaps
    (docs/design.md, "Pools": scheduling choices), but every worker, the one on the
    caller's CPU included, takes calls once the iterator waits: none idles while
    calls queue (as ProcessPoolExecutor's workers all pull from its call queue)."""
    if ex._max_workers < 2:
        pytest.skip("needs two housekeeping CPUs")
    n = 2 * 32 * ex._max_workers              # twice the slots: most are fed while reaping
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {ex._pool.engine.cpus[0]})    # the caller stays on one CPU
    try:
        pids = list(ex.map(pf.sleep_pid, [0.0005] * n))
    finally:
        os.sched_setaffinity(0, mask)
    workers = {w.task.pid for w in ex._pool.engine.workers}
    assert set(pids[n // 2:]) == workers


def test_map_results_wait_for_a_slow_consumer(ex):
    """The calls keep running while nobody iterates; the results come in order."""
    it = ex.map(pf.square, range(500))
    assert next(it) == 0
    wait_until(lambda: ex._pool.engine.live == 0, 10)
    assert list(it) == [i * i for i in range(1, 500)]
