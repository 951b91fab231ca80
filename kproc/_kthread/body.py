"""The kthread side: the body every kthread runs, and the in-kthread API.

:func:`kthread_main` is what a freshly forked child of kthreadd runs (kernel:
``kthread()``): it arms PR_SET_PDEATHSIG, names itself, resets scheduling and
affinity, unpickles its threadfn and data, then *publishes* itself with the
create hand-off (kernel: ``xchg(&create->done, NULL)``: if the creator gave
up, the child exits instead), completes ``done`` and sleeps in
TASK_UNINTERRUPTIBLE until its first wake-up.  Then: ``started``, node
affinity unless bound or preferred, and unless KTHREAD_SHOULD_STOP is
already set, ``__kthread_parkme()`` and ``threadfn(data)``.  The result is
written to the slot and ``exited`` is completed before the process leaves
(kthreadd reaps it and marks the slot dead).

An exception escaping threadfn is printed to stderr with the kthread's name
and kept (``Task.exception``); the result is then ``-EFAULT``.  A kthread
that dies without a result (a signal, ``os._exit``) gets ``-EOWNERDEAD``,
recorded by kthreadd, with the signal in ``Task.exit_signal``.

kthreadd forks its children bare where the C extension is built (``fork``:
no CPython fork handlers in the child; what a kthread can tell of them still
happens, the user's ``after_in_child`` handlers at its start here).
"""

from __future__ import annotations

import errno
import os
import pickle
import sys

from .._core import layout as L
from .._core.blobs import read_blob, store_traceback
from .._core.funcref import prepare_main
from .._core import syscalls as _sys
from .._core.runtime import Runtime, current_runtime, install
from .._sched.completion import Completion, complete
from .affinity import kthread_affine_node
from . import fork as _fork
from .._sched import schedule as _sched
from .._core import trace as _trace
from .._sched.task import Task, TaskState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .._sched.task import ThreadFn  # typing only

__all__ = ["kthread_main", "current", "kthread_should_stop", "kthread_should_park",
           "kthread_should_stop_or_park", "kthread_parkme", "kthread_exit",
           "kthread_complete_and_exit", "EXCEPTION_RESULT"]

T = L.TASK
EXCEPTION_RESULT = -errno.EFAULT


class _KthreadExit(BaseException):
    """Raised by kthread_exit() to unwind to kthread_main (not an Exception)."""

    def __init__(self, result: int) -> None:
        super().__init__(result)
        self.result = result


# -- the kthread body ------------------------------------------------------------

_self_data: tuple[ThreadFn, Any] | None = None    # as this kthread received them
_kthread_pid = 0       # the kthread's own pid: a child it forks must not publish


def kthread_main(rt: Runtime, idx: int, gen: int) -> NoReturn:
    """Body of a kthread, once assigned its slot (kernel: kthread()).  Never returns.

    Context: a child of kthreadd (``fork.fork_children``).
    """
    global _self_data, _kthread_pid
    _fork.settle()
    _kthread_pid = os.getpid()
    try:
        arena = rt.arena
        base = rt.become_kthread(idx, gen)
        install(rt)
        name, fn_pickle, data_pickle = read_blob(arena, idx, base)
        _sys.set_comm(name)
        _sys.reset_scheduling()
        if _trace.ENABLED:
            _trace.after_fork()
            _trace.name_process(name)
        try:
            if b"__main__" in fn_pickle or b"_main__" in data_pickle:
                prepare_main(rt)        # a spare forked before kthreadd imported it
            threadfn = pickle.loads(fn_pickle)
            data = pickle.loads(data_pickle)
        except BaseException as exc:
            import traceback   # an error path: kthreads rarely need it
            _fail_publish(rt, base, f"kthread {name!r}: cannot load threadfn/data: "
                          + "".join(traceback.format_exception_only(type(exc), exc)).strip())
        _self_data = (threadfn, data)
        _publish(rt, base)
    except SystemExit:
        raise
    except BaseException:
        import traceback   # an error path: kthreads rarely need it
        traceback.print_exc()
        os._exit(1)
    _run(rt, base, name, threadfn, data)


def _fail_publish(rt: Runtime, base: int, text: str) -> NoReturn:
    mem = rt.mem
    if mem.cmpxchg32(base + T.handoff, L.HANDOFF_WAITING, L.HANDOFF_FAILED) == \
            L.HANDOFF_WAITING:
        mem.store64(base + T.result, -errno.EINVAL)
        store_traceback(rt.arena, base, text)
        rt.waits.completion_complete(base + T.done, False)
    _exit_now(0)


def _publish(rt: Runtime, base: int) -> None:
    """Tell the creator we exist, then sleep until the first wake-up."""
    mem = rt.mem
    mem.store32(base + T.state, TaskState.TASK_UNINTERRUPTIBLE)
    L.pack_field(rt.buf, base, T, "pid", os.getpid())
    mem.store32(base + T.slot, L.SLOT_LIVE)
    if mem.cmpxchg32(base + T.handoff, L.HANDOFF_WAITING, L.HANDOFF_PUBLISHED) != \
            L.HANDOFF_WAITING:
        # The creator was killed while waiting: nobody will ever wake us.
        mem.store32(base + T.exit_kind, L.EXIT_ABANDONED)
        _exit_now(0)
    rt.waits.completion_complete(base + T.done, False)
    _sched._sleep(rt, base, None)


def _run(rt: Runtime, base: int, name: str, threadfn: ThreadFn, data: Any) -> NoReturn:
    mem = rt.mem
    mem.fetch_or32(base + T.flags, L.KF_STARTED)
    flags = mem.load32(base + T.flags)
    if not flags & (L.KF_NO_SETAFFINITY | L.KF_PREFERRED):
        kthread_affine_node(rt, base)
    result, kind = -errno.EINTR, L.EXIT_NEVER_RAN
    try:
        if not mem.load32(base + T.flags) & L.KF_SHOULD_STOP:
            parkme(rt, base)
            kind = L.EXIT_RETURNED
            ret = threadfn(data)
            result = _as_result(ret)
    except _KthreadExit as ex:
        result, kind = ex.result, L.EXIT_EXITED
    except BaseException:
        if os.getpid() != _kthread_pid:
            _forked_child_exit(1)
        import traceback   # an error path: kthreads rarely need it
        text = traceback.format_exc()
        sys.stderr.write(f"kproc: kthread {name!r} (pid {os.getpid()}) died: {text}")
        store_traceback(rt.arena, base, text)
        result, kind = EXCEPTION_RESULT, L.EXIT_EXCEPTION
    _finish(rt, base, name, result, kind)


def _as_result(ret: object) -> int:
    if ret is None:
        return 0
    if isinstance(ret, int):
        if not -(1 << 63) <= ret < (1 << 63):
            raise OverflowError(f"threadfn returned {ret}, which does not fit in a long")
        return int(ret)
    raise TypeError(f"threadfn must return an int (or None), not {type(ret).__name__}")


def _finish(rt: Runtime, base: int, name: str, result: int, kind: int) -> NoReturn:
    """kthread_exit(): publish the result, complete ``exited``, leave.

    Output is flushed first, so that what the kthread printed is out before
    kthread_stop() returns.  Only the kthread's own process publishes: a
    child it forked that returns from threadfn (or calls kthread_exit) just
    exits, with 0 (1 if threadfn raised), as a plain process would.
    """
    if os.getpid() != _kthread_pid:
        _forked_child_exit(0 if kind != L.EXIT_EXCEPTION else 1)
    _flush_stdio()
    if _trace.ENABLED:
        _trace.lifecycle("exit", os.getpid(), name, result=result)
        _trace.flush()
    mem = rt.mem
    mem.store64(base + T.result, result)
    mem.store32(base + T.exit_kind, kind)
    mem.fetch_or32(base + T.flags, L.KF_EXITING)
    mem.store32(base + T.state, TaskState.TASK_DEAD)
    mem.store32(base + T.slot, L.SLOT_EXITING)
    _push_exiting(rt, base)
    rt.waits.completion_complete(base + T.exited, True)
    _exit_now(0)


def _push_exiting(rt: Runtime, base: int) -> None:
    """Put our slot on the arena's stack of exiting kthreads (``HEADER.exiting_head``,
    linked through ``TASK.next``, free while a slot holds a kthread), so that
    kthreadd reaps us by pid without looking at every slot (``reap``).  Many
    push (CAS), only kthreadd takes, and takes the whole stack at once."""
    mem, head_off = rt.mem, L.HEADER.exiting_head
    me = (base - rt.arena.params.tasks) // T.size + 1
    while True:
        head = mem.load32(head_off)
        mem.store32(base + T.next, head)
        if mem.cmpxchg32(head_off, head, me) == head:
            return


def _forked_child_exit(code: int) -> NoReturn:
    """A process forked inside threadfn left it: it is not the kthread, so it
    writes nothing to the slot and just exits (with the exception printed)."""
    if code:
        import traceback   # an error path: kthreads rarely need it
        traceback.print_exc()
    _exit_now(code)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _exit_now(code: int) -> NoReturn:
    _flush_stdio()
    os._exit(code)


# -- in-kthread API ------------------------------------------------------------------

def current() -> Task | None:
    """The calling kthread's Task, or None when not called from a kthread.

    Context: any.  Return: the Task, or None.
    """
    rt = current_runtime()
    if rt is None or rt.self_idx is None or rt.self_gen is None:
        return None
    return Task(rt, rt.self_idx, rt.self_gen)


def kthread_should_stop() -> bool:
    """kthread_should_stop(): has kthread_stop() been called on us?

    Context: kthread.  Return: bool.  Raises: RuntimeError outside a kthread.
    """
    rt, base = _sched.need_current("kthread_should_stop")
    return bool(rt.mem.load32(base + T.flags) & L.KF_SHOULD_STOP)


def kthread_should_park() -> bool:
    """kthread_should_park(): has kthread_park() been called on us?

    Context: kthread.  Return: bool.
    """
    rt, base = _sched.need_current("kthread_should_park")
    return bool(rt.mem.load32(base + T.flags) & L.KF_SHOULD_PARK)


def kthread_should_stop_or_park() -> bool:
    """kthread_should_stop_or_park(): either of the two.  Context: kthread.  Return: bool."""
    rt, base = _sched.need_current("kthread_should_stop_or_park")
    return bool(rt.mem.load32(base + T.flags) & (L.KF_SHOULD_STOP | L.KF_SHOULD_PARK))


def parkme(rt: Runtime, base: int) -> None:
    """__kthread_parkme(): park while KTHREAD_SHOULD_PARK is set.

    TASK_PARKED is published *before* ``parked`` is completed, so that
    kthread_park()'s wait_task_inactive sees it (the kernel's ordering).
    """
    mem = rt.mem
    while True:
        mem.store32(base + T.state, TaskState.TASK_PARKED)
        if not mem.load32(base + T.flags) & L.KF_SHOULD_PARK:
            break
        rt.waits.completion_complete(base + T.parked, False)
        _sched._sleep(rt, base, None)
    mem.store32(base + T.state, TaskState.TASK_RUNNING)


def kthread_parkme() -> None:
    """kthread_parkme(): park until kthread_unpark() if asked to.

    Context: kthread; blocks while parked.
    """
    rt, base = _sched.need_current("kthread_parkme")
    parkme(rt, base)


def kthread_exit(result: int) -> NoReturn:
    """kthread_exit(): end the calling kthread now with ``result``.  Does not return.

    Implemented by raising a BaseException that unwinds to the kthread body
    (``finally`` blocks run; ``except Exception`` does not catch it).
    Context: kthread.  Raises: TypeError for a non-int result.
    """
    _sched.need_current("kthread_exit")
    if isinstance(result, bool) or not isinstance(result, int):
        raise TypeError(f"result must be an int, not {type(result).__name__}")
    raise _KthreadExit(_as_result(result))


def kthread_complete_and_exit(comp: Completion | None, code: int) -> NoReturn:
    """kthread_complete_and_exit(): complete ``comp`` (if not None), then exit with ``code``.

    Context: kthread.  Does not return.
    """
    _sched.need_current("kthread_complete_and_exit")
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code must be an int, not {type(code).__name__}")
    if comp is not None:
        complete(comp)
    raise _KthreadExit(_as_result(code))


def self_data() -> tuple[ThreadFn, Any] | None:
    """(threadfn, data) as this kthread received them, or None."""
    return _self_data
