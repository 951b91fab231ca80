"""KthreadPoolExecutor and CPU hotplug: a pool worker is a per-CPU kthread, parked while
its CPU is offline; the calls queued on it move to the other workers (docs/design.md,
"Pools"), on a fake sysfs tree and, as root, on the real CPU1.
"""

import threading

import pytest

import kproc
from fns import pool as pf
from helpers import all_online, real_hotplug_cpu, wait_until

pytestmark = pytest.mark.timeout(60)

MODES = ["fake"] + (["real"] if real_hotplug_cpu() is not None else [])


@pytest.fixture(params=MODES)
def hp(request, tmp_path):
    """(runtime, cpu to cycle): a fake tree with CPUs 0-1, or the real /sys and CPU1."""
    if request.param == "real":
        root, cpu = "/sys", real_hotplug_cpu()
    else:
        root, cpu = kproc.fake_sysfs(tmp_path / "sys", possible=2), 1
    all_online(root)
    runtime = kproc.start(sysfs_root=root)
    try:
        yield runtime, cpu
    finally:
        try:
            runtime.shutdown()
        finally:
            all_online(root)


def _worker_on(ex, cpu):
    eng = ex._pool.engine
    return next(w for w, c in zip(eng.workers, eng.cpus) if c == cpu)


def _block_all(ex):
    got = []
    for _ in range(ex._max_workers):
        started, release = kproc.Completion(), kproc.Completion()
        got.append((ex.submit(pf.started_then_wait, started, release, "blocked"), release))
        kproc.wait_for_completion(started)
    return got


def test_cpu_down_parks_the_worker_and_moves_its_queued_calls(hp):
    """kthread.c: kthread_park() waits for the running call (parked between works);
    the queued calls run on the other CPU's worker (workqueue.c unbind_workers moves a
    dying CPU's pending work the same way)."""
    rt, cpu = hp
    other = min(kproc.cpu_online_mask() - {cpu})
    with kproc.KthreadPoolExecutor(cpus=[other, cpu]) as ex:
        w = _worker_on(ex, cpu)
        blocked = _block_all(ex)
        queued = [ex.submit(pf.affinity) for _ in range(6)]
        assert w.queued >= 1
        res = []
        down = threading.Thread(target=lambda: res.append(kproc.cpu_down(cpu)))
        try:
            down.start()
            wait_until(lambda: ex._pool.engine.parked(1), 10)
            assert all(not f.done() for f in queued)
            for _fut, release in blocked:
                kproc.complete(release)
            down.join(20)
            assert res == [0]
            assert kproc.task_state(w.task) == kproc.TASK_PARKED
            assert [f.result(timeout=10) for f in queued] == [[other]] * 6
            assert all(f.result(timeout=5) == "blocked" for f, _ in blocked)
            assert ex.submit(pf.affinity).result(timeout=5) == [other]
        finally:
            down.join(20)
            kproc.cpu_up(cpu)
        wait_until(lambda: kproc.task_state(w.task) != kproc.TASK_PARKED, 10)
        assert ex._pool.engine.parked(1) is False
        blocked = _block_all(ex)               # one per worker again: both are back
        assert sorted(f.running() for f, _ in blocked) == [True, True]
        for _fut, release in blocked:
            kproc.complete(release)
        wait_until(lambda: set(map(tuple, ex.map(pf.affinity, range(40)))) ==
                   {(other,), (cpu,)}, 10)


def test_a_maps_calls_queued_on_a_cpu_going_down_move_to_the_other(hp):
    """A map's calls (run by the worker's drain, not a work each) move as well: the drain
    stops between two calls when its worker is asked to park (kthread.c: parked between
    works), the calls not started run on the other worker, in order of results."""
    rt, cpu = hp
    other = min(kproc.cpu_online_mask() - {cpu})
    with kproc.KthreadPoolExecutor(cpus=[other, cpu]) as ex:
        blocked = _block_all(ex)
        it = ex.map(pf.affinity, range(40))
        res = []
        down = threading.Thread(target=lambda: res.append(kproc.cpu_down(cpu)))
        try:
            down.start()
            wait_until(lambda: ex._pool.engine.parked(1), 10)
            for _fut, release in blocked:
                kproc.complete(release)
            down.join(20)
            assert res == [0]
            assert list(it) == [[other]] * 40
        finally:
            down.join(20)
            kproc.cpu_up(cpu)
        assert sorted(set(map(tuple, ex.map(pf.affinity, range(200))))) in \
            ([(other,)], sorted([(other,), (cpu,)]))


def test_calls_wait_while_every_worker_is_parked(hp):
    rt, cpu = hp
    with kproc.KthreadPoolExecutor(cpus=[cpu]) as ex:
        try:
            assert kproc.cpu_down(cpu) == 0
            fut = ex.submit(pf.affinity)
            with pytest.raises(TimeoutError):
                fut.result(timeout=0.3)
            assert fut.cancel() and fut.cancelled()   # never started: cancel succeeds
            fut2 = ex.submit(pf.affinity)
        finally:
            kproc.cpu_up(cpu)
        assert fut2.result(timeout=10) == [cpu]


def test_a_pool_on_an_offline_cpu_starts_parked(hp):
    rt, cpu = hp
    try:
        assert kproc.cpu_down(cpu) == 0
        with kproc.KthreadPoolExecutor(cpus=[cpu]) as ex:
            w = _worker_on(ex, cpu)
            wait_until(lambda: kproc.task_state(w.task) == kproc.TASK_PARKED, 5)
            fut = ex.submit(pf.affinity)
            assert kproc.cpu_up(cpu) == 0
            assert fut.result(timeout=10) == [cpu]
    finally:
        kproc.cpu_up(cpu)


def test_hotplug_after_shutdown_finds_nothing_to_do(hp):
    rt, cpu = hp
    with kproc.KthreadPoolExecutor() as ex:
        ex.submit(pf.noop).result()
    try:
        assert kproc.cpu_down(cpu) == 0
    finally:
        assert kproc.cpu_up(cpu) == 0
