"""Handles on workers and works: ``KthreadWorker``, ``KthreadWork``, ``KthreadDelayedWork``.

The kernel embeds ``struct kthread_work`` in the user's own structure and
reaches the rest with ``container_of``.  Here a work is a slot of the arena's
work table (its list node, worker, canceling counter, timer) plus a blob
holding the pickled ``(func, data)`` (``payload``); ``work.data`` plays
``container_of``.  A worker is a slot of the worker table
(``struct kthread_worker``).

A handle is (runtime, slot index, generation) on the ``_core.handle.Handle``
base, which pickles it and compares it; a copy used after its slot was freed
or recycled raises (the generation no longer matches), never touching the
new occupant.  Only the handle a process constructs owns its slot; how an
owned slot is freed is ``lifetime``'s business.  Each process sees its own
copy of ``data``, as with any handle.

Also here: the argument checks every work-queue function starts with
(:func:`resolve_work`, :func:`resolve_worker`, :func:`same_runtime`,
:func:`work_owner_check`), done before any shared state is touched.

Runs in every process of the runtime (handles travel by pickling).
"""

from __future__ import annotations

import errno
import os

from .._core import layout as L
from .._core.errors import KthreadError, kernel_warn
from .._core.handle import Handle
from .._core.runtime import Runtime, get_runtime
from .._sched.task import Task
from .lifetime import defer_free, drain_deferred_frees, alloc_work_slot, reinit_work
from .lists import Locked, tied_worker
from .payload import pickle_payload, write_payload, read_payload, read_traceback
from .timers import run_timers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Self

    from .payload import WorkFunc  # typing only: an alias

__all__ = ["KthreadWorker", "KthreadWork", "KthreadDelayedWork", "resolve_work",
           "resolve_worker", "same_runtime", "work_owner_check", "work_handle_for_exec",
           "KTW_FREEZABLE"]

W = L.WORK
K = L.WORKER

KTW_FREEZABLE = 1 << 0


class KthreadWork(Handle):
    """A work item: ``func(work)`` runs in the worker's process (``struct kthread_work``).

    @func: a module-level callable taking the work; @data: any picklable
    payload, read back as ``work.data``.  Context: any process of the runtime
    (starts the default runtime if none).  Raises: TypeError (func not
    callable or not picklable by reference, data not picklable), ValueError
    (payload too large), KthreadError(ENOMEM) when the work table is full.

    Read-only attributes: ``func``, ``data``, ``worker`` (the worker it was
    last queued on, or None), ``runs`` (times executed), ``exception`` (the
    traceback text of its last failed run, or None).
    """

    _kind = L.WK_WORK
    _what = "work"
    __slots__ = ("_off", "_owner", "_func", "_data", "_version", "__weakref__")
    _off: int
    _owner: bool
    _func: WorkFunc | None
    _data: Any
    _version: int | None

    def __init__(self, func: Callable[[Self], object], data: object = None) -> None:
        raw = pickle_payload(func, data)
        rt = get_runtime()
        got = alloc_work_slot(rt, self._kind, f"all {rt.arena.params.user_works} works "
                              "are in use")
        self._rt, (self._idx, self._gen) = rt, got
        self._off = rt.arena.work_off(self._idx)
        self._owner = True
        write_payload(rt, self._idx, raw)
        self._func, self._data, self._version = func, data, 0

    @classmethod
    def _attach(cls, rt: Runtime, idx: int, gen: int) -> Self:
        self = object.__new__(cls)
        self._rt, self._idx, self._gen, self._owner = rt, idx, gen, False
        self._off = rt.arena.work_off(idx)
        self._func = self._data = self._version = None
        return self

    def _base(self) -> int:
        return self._live_runtime().arena.check_work(self._idx, self._gen)

    def _load(self) -> int:
        base = self._base()
        version = self._rt.mem.load32(base + W.version)
        if self._version != version:
            self._func, self._data = read_payload(self._rt, self._idx, base)
            self._version = version
        return base

    @property
    def func(self) -> WorkFunc:
        self._load()
        return self._func  # type: ignore[return-value]  # _load() has set it

    @property
    def data(self) -> Any:
        self._load()
        return self._data

    @property
    def work(self) -> Self:
        """The embedded ``struct kthread_work`` (``dwork->work``): the handle itself."""
        return self

    @property
    def worker(self) -> KthreadWorker | None:
        base = self._base()
        w = self._rt.mem.load32(base + W.worker)
        if not w:
            return None
        return KthreadWorker._attach(self._rt, w - 1, self._rt.mem.load32(base + W.worker_gen))

    @property
    def runs(self) -> int:
        return self._rt.mem.load64(self._base() + W.runs)

    @property
    def exception(self) -> str | None:
        return read_traceback(self._rt, self._idx, self._base())

    def _reinit(self, func: Callable[[Self], object]) -> None:
        """kthread_init_work() on an existing work: new func, no worker."""
        raw = pickle_payload(func, self.data)
        reinit_work(self._rt, self._base(), self._idx, raw)
        self._func, self._version = func, None

    def __del__(self) -> None:
        if getattr(self, "_owner", False):
            defer_free(self._rt, "work", self._idx, self._gen)

    def __repr__(self) -> str:
        name = getattr(self._func, "__qualname__", None) or f"slot {self._idx}"
        return f"<{type(self).__name__} {name}>"


class KthreadDelayedWork(KthreadWork):
    """A work with a timer (``struct kthread_delayed_work``); see :class:`KthreadWork`."""

    _kind = L.WK_DELAYED
    __slots__ = ()


def _work_class(rt: Runtime, base: int) -> type[KthreadWork]:
    return KthreadDelayedWork if rt.mem.load32(base + W.kind) == L.WK_DELAYED else KthreadWork


def work_handle_for_exec(rt: Runtime, idx: int, gen: int,
                         cache: dict[int, KthreadWork]) -> KthreadWork:
    """The handle a worker passes to ``func``, cached per slot and version."""
    base = rt.arena.work_off(idx)
    version = rt.mem.load32(base + W.version)
    handle = _work_class(rt, base)._attach(rt, idx, gen)
    handle._func, handle._data = read_payload(rt, idx, base)
    handle._version = version
    cache[idx + 1] = handle
    return handle


class KthreadWorker(Handle):
    """A kthread worker (``struct kthread_worker``).

    Made by ``kthread_create_worker*()``, or constructed empty and set up with
    ``kthread_init_worker()`` for a kthread running ``kthread_worker_fn``.
    Read-only attributes: ``task`` (the kthread serving it, or None),
    ``flags``, ``queued`` (works on its list), ``delayed`` (timers pending),
    ``executed``, ``errors`` (works that raised), ``current_work``.
    Context: any process of the runtime.  Raises: KthreadError(ENOMEM).
    """

    _what = "worker"
    __slots__ = ("_off", "_owner", "__weakref__")
    _off: int
    _owner: bool

    def __init__(self) -> None:
        rt = get_runtime()
        drain_deferred_frees()
        self._rt = rt
        self._idx, self._gen = rt.arena.alloc_worker(os.getpid())
        self._off = rt.arena.worker_off(self._idx)
        self._owner = True

    @classmethod
    def _attach(cls, rt: Runtime, idx: int, gen: int) -> Self:
        self = object.__new__(cls)
        self._rt, self._idx, self._gen, self._owner = rt, idx, gen, False
        self._off = rt.arena.worker_off(idx)
        return self

    def _base(self) -> int:
        return self._live_runtime().arena.check_worker(self._idx, self._gen)

    def _field(self, name: str) -> int:
        return L.unpack_field(self._rt.buf, self._base(), K, name)

    @property
    def task(self) -> Task | None:
        base = self._base()
        t = self._rt.mem.load32(base + K.task)
        return Task(self._rt, t - 1, self._rt.mem.load32(base + K.task_gen)) if t else None

    @property
    def flags(self) -> int:
        return self._field("flags")

    def _timers_fired(self) -> int:
        """Fire due timers first, so counters read as in the kernel (see ``timers``)."""
        base = self._base()
        if self._rt.mem.load32(base + K.thead):
            with Locked(self._rt, base) as lk:
                run_timers(lk)
        return base

    @property
    def queued(self) -> int:
        """Works on the work list (due timers included), flush markers excluded."""
        return self._rt.mem.load32(self._timers_fired() + K.depth)

    @property
    def delayed(self) -> int:
        """Delayed works whose timer has not expired yet."""
        return self._rt.mem.load32(self._timers_fired() + K.ndelayed)

    @property
    def executed(self) -> int:
        return self._field("executed")

    @property
    def errors(self) -> int:
        return self._field("errors")

    @property
    def current_work(self) -> KthreadWork | None:
        base = self._base()
        cur = self._rt.mem.load32(base + K.current)
        if not cur:
            return None
        wbase = self._rt.arena.work_off(cur - 1)
        gen = self._rt.mem.load32(wbase + W.gen)
        return _work_class(self._rt, wbase)._attach(self._rt, cur - 1, gen)

    def __del__(self) -> None:
        if getattr(self, "_owner", False):
            defer_free(self._rt, "worker", self._idx, self._gen)

    def __repr__(self) -> str:
        try:
            task = self.task
            return f"<KthreadWorker {task.name if task else '(no task)'}>"
        except KthreadError:
            return f"<KthreadWorker slot={self._idx} (stale)>"


# -- argument checks ------------------------------------------------------------------

def resolve_work(work: object, what: str = "work", delayed: bool = False) -> tuple[Runtime, int]:
    """Check a work argument; return (runtime, slot offset).

    Raises: TypeError (not a work, or not delayed when ``delayed``);
    KthreadError(ESRCH) for a stale handle.
    """
    cls = KthreadDelayedWork if delayed else KthreadWork
    if not isinstance(work, cls):
        raise TypeError(f"{what} must be a kproc.{cls.__name__}, not {type(work).__name__}")
    return work._rt, work._base()


def resolve_worker(worker: object) -> tuple[Runtime, int]:
    """Check a worker argument; return (runtime, slot offset).

    Raises: TypeError; KthreadError(ESRCH) for a stale (destroyed) worker.
    """
    if not isinstance(worker, KthreadWorker):
        raise TypeError(f"worker must be a kproc.KthreadWorker, not {type(worker).__name__}")
    try:
        return worker._rt, worker._base()
    except KthreadError as exc:
        if exc.errno == errno.ESRCH:
            raise KthreadError(errno.ESRCH, "the worker was destroyed (stale "
                               "KthreadWorker handle); nothing was touched") from None
        raise


def same_runtime(rt: Runtime, other_rt: Runtime, what: str) -> None:
    """Raises: ValueError if a handle of another runtime was passed as ``what``."""
    if rt is not other_rt:
        raise ValueError(f"the {what} belongs to another kproc runtime")


def resolve_queue_args(worker: object, work: object, what: str = "work",
                       delayed: bool = False) -> tuple[Runtime, int, int]:
    """Check a (worker, work) pair of one runtime: the start of every queueing call.

    Return: (runtime, worker offset, work offset).
    Raises: TypeError, KthreadError(ESRCH) (as resolve_worker / resolve_work),
    ValueError if the two belong to different runtimes.
    """
    rt, kbase = resolve_worker(worker)
    wrt, base = resolve_work(work, what, delayed=delayed)
    same_runtime(rt, wrt, what)
    return rt, kbase, base


def work_owner_check(rt: Runtime, base: int, kbase: int, fn_name: str) -> bool:
    """WARN_ON_ONCE(work->worker && work->worker != worker): True if tied elsewhere.

    A work is tied to one worker; using it with another is refused with a
    KernelWarning (the kernel only warns and goes on).
    Raises: KthreadError(ESRCH) if the work was last queued on a destroyed worker.
    """
    other = tied_worker(rt, base)
    if other is not None and other != kbase:
        kernel_warn(f"{fn_name}(): the work is tied to another worker (a work must not "
                    "be used with more than one worker; kthread_init_work() it first); "
                    "refused", stacklevel=4)
        return True
    return False
