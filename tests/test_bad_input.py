"""Bad input raises a clear error before anything changes (SPEC §5)."""

import errno
import math
import pickle

import pytest

import kproc
from fns import kthread as kfuncs
from helpers import live_kthreads

pytestmark = pytest.mark.timeout(30)


def _kthreads(rt):
    return live_kthreads(rt)


def test_non_callable_threadfn(rt):
    with pytest.raises(TypeError, match="callable"):
        kproc.kthread_create(42, None, "x")
    assert _kthreads(rt) == []


def test_lambda_fails_at_once_with_advice(rt):
    with pytest.raises(TypeError, match="module level"):
        kproc.kthread_run(lambda d: 0, None, "lam")
    assert _kthreads(rt) == []


def test_closure_fails_at_once(rt):
    def inner(d):
        return 0
    with pytest.raises(TypeError, match="lambdas, closures"):
        kproc.kthread_create(inner, None, "closure")


def test_unpicklable_data(rt):
    import threading
    with pytest.raises(TypeError, match="data cannot be pickled"):
        kproc.kthread_create(kfuncs.ret_value, threading.Lock(), "lock")
    assert _kthreads(rt) == []


@pytest.mark.parametrize("fmt,args", [("w%d", ()), ("w%d", ("x",)), ("w%", ()),
                                      ("a", (1,))])
def test_bad_name_format(rt, fmt, args):
    with pytest.raises(ValueError, match="bad kthread name format"):
        kproc.kthread_create(kfuncs.ret_value, 0, fmt, *args)


def test_name_not_a_string(rt):
    with pytest.raises(TypeError):
        kproc.kthread_create(kfuncs.ret_value, 0, b"bytes")


def test_cpu_not_possible(rt):
    with pytest.raises(ValueError, match="not possible"):
        kproc.kthread_create_on_cpu(kfuncs.ret_value, 0, 4096, "c/%u")
    with pytest.raises((ValueError, TypeError)):
        kproc.kthread_create_on_cpu(kfuncs.ret_value, 0, -1, "c/%u")
    assert _kthreads(rt) == []


def test_bind_to_impossible_cpu_changes_nothing(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "b")
    with pytest.raises(ValueError):
        kproc.kthread_bind(task, 999)
    with pytest.raises(ValueError):
        kproc.kthread_bind_mask(task, [])
    with pytest.raises(TypeError):
        kproc.kthread_bind_mask(task, 3)
    assert not rt.mem.load32(task._base + kproc._core.layout.TASK.flags) & \
        kproc._core.layout.KF_NO_SETAFFINITY
    kproc.kthread_stop(task)


def test_bad_node(rt):
    with pytest.raises(ValueError, match="node"):
        kproc.kthread_create_on_node(kfuncs.ret_value, 0, 77, "n")
    with pytest.raises(TypeError):
        kproc.kthread_create_on_node(kfuncs.ret_value, 0, "0", "n")


def test_non_task_arguments(rt):
    for fn in (kproc.wake_up_process, kproc.kthread_stop, kproc.kthread_park,
               kproc.kthread_unpark, kproc.kthread_data, kproc.task_state,
               kproc.get_kthread_comm, kproc.kthread_is_per_cpu):
        with pytest.raises(TypeError, match="kproc.Task"):
            fn(1234)


@pytest.mark.parametrize("fn", [kproc.kthread_should_stop, kproc.kthread_should_park,
                                kproc.kthread_should_stop_or_park, kproc.kthread_parkme,
                                kproc.schedule])
def test_in_kthread_calls_outside_a_kthread(rt, fn):
    with pytest.raises(RuntimeError, match="must be called from a kthread"):
        fn()


def test_in_kthread_calls_with_args_outside_a_kthread(rt):
    with pytest.raises(RuntimeError):
        kproc.kthread_exit(0)
    with pytest.raises(RuntimeError):
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
    with pytest.raises(RuntimeError):
        kproc.schedule_timeout(0.1)


def test_negative_and_nan_timeouts(rt):
    c = kproc.Completion()
    for bad in (-1, math.nan):
        with pytest.raises(ValueError):
            kproc.wait_for_completion_timeout(c, bad)
        with pytest.raises(ValueError):
            kproc.msleep(bad)
    with pytest.raises(TypeError):
        kproc.wait_for_completion_timeout(c, "1")


def test_bad_state(rt):
    with pytest.raises(ValueError):
        kproc.set_current_state(kproc.TASK_PARKED)


def test_stale_task_handle_raises_and_never_touches_new_occupant():
    with kproc.start(max_kthreads=1):
        old = kproc.kthread_create(kfuncs.ret_value, 1, "old")
        assert kproc.kthread_stop(old) == -errno.EINTR
        new = kproc.kthread_create(kfuncs.ret_value, 2, "new")   # recycles the slot
        assert new._idx == old._idx
        for fn in (kproc.kthread_stop, kproc.wake_up_process, kproc.kthread_park):
            with pytest.raises(kproc.KthreadError) as ei:
                fn(old)
            assert ei.value.errno == errno.ESRCH
        assert kproc.task_state(new) == kproc.TASK_UNINTERRUPTIBLE
        assert kproc.kthread_stop(new) == -errno.EINTR


def test_a_recycled_slot_is_not_completed_by_its_previous_occupant_reaping():
    """kthreadd's reaping of the old occupant must not end the new one's kthread_stop()."""
    results = []
    for i in range(30):         # the race is at a fresh runtime's first recycling
        with kproc.start(max_kthreads=1):
            for j in range(2):
                t = kproc.kthread_create(kfuncs.ret_value, j, "recycled")
                results.append(kproc.kthread_stop(t))
    assert results == [-errno.EINTR] * 60


def test_full_task_table_is_enomem_and_harms_nothing():
    with kproc.start(max_kthreads=2):
        sa, sb = kproc.Completion(), kproc.Completion()
        a = kproc.kthread_run(kfuncs.loop_until_stop, sa, "a")
        b = kproc.kthread_run(kfuncs.loop_until_stop, sb, "b")
        kproc.wait_for_completion(sa)
        kproc.wait_for_completion(sb)
        with pytest.raises(kproc.KthreadError) as ei:
            kproc.kthread_create(kfuncs.ret_value, 0, "c")
        assert ei.value.errno == errno.ENOMEM
        assert kproc.kthread_stop(a) == 7 and kproc.kthread_stop(b) == 7


def test_pinned_slot_is_not_recycled():
    with kproc.start(max_kthreads=1):
        t = kproc.get_task_struct(kproc.kthread_create(kfuncs.ret_value, 1, "pinned"))
        kproc.kthread_stop(t)
        with pytest.raises(kproc.KthreadError) as ei:
            kproc.kthread_create(kfuncs.ret_value, 0, "c")
        assert ei.value.errno == errno.ENOMEM
        kproc.put_task_struct(t)
        kproc.kthread_stop(kproc.kthread_create(kfuncs.ret_value, 0, "c"))


def test_start_arguments_are_checked():
    with pytest.raises(ValueError):
        kproc.start(max_kthreads=0)
    with pytest.raises(TypeError):
        kproc.start(max_kthreads="8")
    with pytest.raises(ValueError):
        kproc.start(backend="nope")
    with pytest.raises(TypeError):
        kproc.start(preload="os")
    with pytest.raises(ValueError):
        kproc.start(sysfs_root="/nonexistent")


def test_data_too_large(rt):
    with pytest.raises(ValueError, match="at most"):
        kproc.kthread_create(kfuncs.ret_value, b"x" * 100_000, "big")


def test_unpickling_a_task_outside_its_runtime_fails(rt):
    t = kproc.kthread_create(kfuncs.ret_value, 0, "p")
    blob = pickle.dumps(t)
    kproc.kthread_stop(t)
    rt.shutdown()
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(blob)
