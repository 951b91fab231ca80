"""Handles on workers and works: ``KthreadWorker``, ``KthreadWork``, ``KthreadDelayedWork``.

The kernel embeds ``struct kthread_work`` in the user's own structure and
reaches the rest with ``container_of``.  Here a work is a slot of the arena's
work table (its list node, worker, canceling counter, timer) plus a blob
holding the pickled ``(func, data)``; ``work.data`` plays ``container_of``.
A worker is a slot of the worker table (``struct kthread_worker``).

Ownership.  The handle a process *constructs* owns the slot; copies made by
pickling (handed to kthreads, or the one a worker passes to ``func``) do not.
When the owning handle is garbage-collected, the slot is freed if the work is
idle, or marked orphan and freed by whoever makes it idle (the worker after
running it, a cancel): ``kthread_queue_work(w, KthreadWork(f))`` and forget
works, and a program that creates and drops a million works runs in bounded
memory.  A copy used after its slot was freed or recycled raises (the
generation no longer matches), never touching the new occupant.
``__del__`` never takes a lock (it may run inside a locked section of this
very process, from the cyclic GC): it only queues the slot on a process-local
list drained at the next allocation.

Payloads: the pickled ``(func, data)`` must fit in ``WORK_PAYLOAD_MAX``
bytes; ``func`` is pickled by reference (a module-level function).  Each
process sees its own copy of ``data``, as with any handle.
"""

import errno
import os
import pickle

from .._core import layout as L
from .._core.errors import KthreadError
from .._core.funcref import pickle_function, prepare_main

__all__ = ["KthreadWorker", "KthreadWork", "KthreadDelayedWork", "resolve_work",
           "resolve_worker", "drain_deferred_frees", "work_handle_for_exec",
           "store_work_traceback", "KTW_FREEZABLE"]

W = L.WORK
K = L.WORKER

KTW_FREEZABLE = 1 << 0

_deferred = []          # (runtime, "work" | "worker", idx, gen) whose owner handle died


def _runtime():
    from .._core.runtime import get_runtime
    return get_runtime()


def _pickle_func(func):
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    return pickle_function(func, "func")


def _pickle_payload(func_pickle, data):
    try:
        data_pickle = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"work data must be picklable: {exc}") from exc
    raw = pickle.dumps((func_pickle, data_pickle), protocol=pickle.HIGHEST_PROTOCOL)
    if len(raw) > L.WORK_PAYLOAD_MAX:
        raise ValueError(f"work func and data pickle to {len(raw)} bytes, more than the "
                         f"{L.WORK_PAYLOAD_MAX} a work slot holds; keep large data elsewhere "
                         "(a file, shared memory) and pass a small handle to it")
    return raw


def drain_deferred_frees():
    """Free the slots whose owning handles were collected.  Context: no lock held."""
    while _deferred:
        rt, what, idx, gen = _deferred.pop()
        if rt.closed:
            continue
        if what == "worker":
            base = rt.arena.worker_off(idx)
            if rt.mem.load32(base + K.gen) == gen and not rt.mem.load32(base + K.task):
                rt.arena.free_worker(idx, gen)
        else:
            from .lists import release_work
            release_work(rt, idx, gen)


def _write_payload(rt, idx, raw):
    off = rt.arena.work_blob_off(idx)
    rt.buf[off:off + len(raw)] = raw
    rt.mem.store32(rt.arena.work_off(idx) + W.payload_len, len(raw))


def _read_payload(rt, idx, base):
    n = rt.mem.load32(base + W.payload_len)
    off = rt.arena.work_blob_off(idx)
    func_pickle, data_pickle = pickle.loads(bytes(rt.buf[off:off + n]))
    try:
        return pickle.loads(func_pickle), pickle.loads(data_pickle)
    except (AttributeError, ImportError):
        if b"__main__" not in func_pickle + data_pickle or not prepare_main(rt):
            raise
        return pickle.loads(func_pickle), pickle.loads(data_pickle)


def store_work_traceback(rt, idx, text):
    """Keep the tail of the traceback of a work's last failed run in its blob."""
    raw = text.encode("utf-8", "replace")[-L.WORK_TB_MAX:]
    off = rt.arena.work_blob_off(idx) + L.WORK_PAYLOAD_MAX
    rt.buf[off:off + len(raw)] = raw
    rt.mem.store32(rt.arena.work_off(idx) + W.tb_len, len(raw))


class KthreadWork:
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
    __slots__ = ("_rt", "_idx", "_gen", "_off", "_owner", "_func", "_data", "_version",
                 "__weakref__")

    def __init__(self, func, data=None):
        raw = _pickle_payload(_pickle_func(func), data)
        rt = _runtime()
        drain_deferred_frees()
        got = rt.arena.alloc_work(os.getpid(), self._kind)
        if got is None:
            from .lists import sweep_works
            sweep_works(rt)
            got = rt.arena.alloc_work(os.getpid(), self._kind)
            if got is None:
                raise KthreadError(errno.ENOMEM, f"work table full: all "
                                   f"{rt.arena.params.max_works} works are in use (start "
                                   "the runtime with a larger max_works)")
        self._rt, (self._idx, self._gen) = rt, got
        self._off = rt.arena.work_off(self._idx)
        self._owner = True
        _write_payload(rt, self._idx, raw)
        self._func, self._data, self._version = func, data, 0

    @classmethod
    def _attach(cls, rt, idx, gen):
        self = object.__new__(cls)
        self._rt, self._idx, self._gen, self._owner = rt, idx, gen, False
        self._off = rt.arena.work_off(idx)
        self._func = self._data = self._version = None
        return self

    def _base(self):
        if self._rt.closed:
            raise KthreadError(errno.ESRCH, "the work's kproc runtime was shut down")
        return self._rt.arena.check_work(self._idx, self._gen)

    def _load(self):
        base = self._base()
        version = self._rt.mem.load32(base + W.version)
        if self._version != version:
            self._func, self._data = _read_payload(self._rt, self._idx, base)
            self._version = version
        return base

    @property
    def func(self):
        self._load()
        return self._func

    @property
    def data(self):
        self._load()
        return self._data

    @property
    def work(self):
        """The embedded ``struct kthread_work`` (``dwork->work``): the handle itself."""
        return self

    @property
    def worker(self):
        base = self._base()
        w = self._rt.mem.load32(base + W.worker)
        if not w:
            return None
        return KthreadWorker._attach(self._rt, w - 1, self._rt.mem.load32(base + W.worker_gen))

    @property
    def runs(self):
        return self._rt.mem.load64(self._base() + W.runs)

    @property
    def exception(self):
        base = self._base()
        n = self._rt.mem.load32(base + W.tb_len)
        if not n:
            return None
        off = self._rt.arena.work_blob_off(self._idx) + L.WORK_PAYLOAD_MAX
        return bytes(self._rt.buf[off:off + n]).decode("utf-8", "replace")

    def _reinit(self, func):
        """kthread_init_work() on an existing work: new func, no worker."""
        raw = _pickle_payload(_pickle_func(func), self.data)
        from .lists import reinit_work
        reinit_work(self, raw)
        self._func, self._version = func, None

    def __reduce__(self):
        return (_restore_work, (type(self), self._rt.runtime_id, self._idx, self._gen))

    def __eq__(self, other):
        return (isinstance(other, KthreadWork) and other._rt is self._rt
                and other._idx == self._idx and other._gen == self._gen)

    def __hash__(self):
        return hash((self._rt.runtime_id, "work", self._idx, self._gen))

    def __del__(self):
        if getattr(self, "_owner", False):
            _deferred.append((self._rt, "work", self._idx, self._gen))

    def __repr__(self):
        name = getattr(self._func, "__qualname__", None) or f"slot {self._idx}"
        return f"<{type(self).__name__} {name}>"


class KthreadDelayedWork(KthreadWork):
    """A work with a timer (``struct kthread_delayed_work``); see :class:`KthreadWork`."""

    _kind = L.WK_DELAYED
    __slots__ = ()


def _restore_work(cls, runtime_id, idx, gen):
    from .._core.runtime import current_runtime
    rt = current_runtime()
    if rt is None or rt.runtime_id != runtime_id:
        raise pickle.UnpicklingError(f"a kproc.{cls.__name__} can only be unpickled in a "
                                     "process of the runtime that created it")
    return cls._attach(rt, idx, gen)


def work_handle_for_exec(rt, idx, gen, cache):
    """The handle a worker passes to ``func``, cached per slot and version."""
    base = rt.arena.work_off(idx)
    version = rt.mem.load32(base + W.version)
    cls = KthreadDelayedWork if rt.mem.load32(base + W.kind) == L.WK_DELAYED else KthreadWork
    handle = cls._attach(rt, idx, gen)
    handle._func, handle._data = _read_payload(rt, idx, base)
    handle._version = version
    cache[idx + 1] = handle
    return handle


def resolve_work(work, what="work", delayed=False):
    """Check a work argument; return (runtime, slot offset).

    Raises: TypeError (not a work, or not delayed when ``delayed``);
    KthreadError(ESRCH) for a stale handle.
    """
    cls = KthreadDelayedWork if delayed else KthreadWork
    if not isinstance(work, cls):
        raise TypeError(f"{what} must be a kproc.{cls.__name__}, not {type(work).__name__}")
    return work._rt, work._base()


class KthreadWorker:
    """A kthread worker (``struct kthread_worker``).

    Made by ``kthread_create_worker*()``, or constructed empty and set up with
    ``kthread_init_worker()`` for a kthread running ``kthread_worker_fn``.
    Read-only attributes: ``task`` (the kthread serving it, or None),
    ``flags``, ``queued`` (works on its list), ``delayed`` (timers pending),
    ``executed``, ``errors`` (works that raised), ``current_work``.
    Context: any process of the runtime.  Raises: KthreadError(ENOMEM).
    """

    __slots__ = ("_rt", "_idx", "_gen", "_off", "_owner", "__weakref__")

    def __init__(self):
        rt = _runtime()
        drain_deferred_frees()
        self._rt = rt
        self._idx, self._gen = rt.arena.alloc_worker(os.getpid())
        self._off = rt.arena.worker_off(self._idx)
        self._owner = True

    @classmethod
    def _attach(cls, rt, idx, gen):
        self = object.__new__(cls)
        self._rt, self._idx, self._gen, self._owner = rt, idx, gen, False
        self._off = rt.arena.worker_off(idx)
        return self

    def _base(self):
        if self._rt.closed:
            raise KthreadError(errno.ESRCH, "the worker's kproc runtime was shut down")
        return self._rt.arena.check_worker(self._idx, self._gen)

    def _field(self, name):
        return L.unpack_field(self._rt.buf, self._base(), K, name)

    @property
    def task(self):
        from .._sched.task import Task
        base = self._base()
        t = self._rt.mem.load32(base + K.task)
        return Task(self._rt, t - 1, self._rt.mem.load32(base + K.task_gen)) if t else None

    @property
    def flags(self):
        return self._field("flags")

    def _timers_fired(self):
        """Fire due timers first, so counters read as in the kernel (see _delayed)."""
        from .lists import Locked
        from .delayed import run_timers
        base = self._base()
        if self._rt.mem.load32(base + K.thead):
            with Locked(self._rt, base) as lk:
                run_timers(lk)
        return base

    @property
    def queued(self):
        """Works on the work list (due timers included), flush markers excluded."""
        return self._rt.mem.load32(self._timers_fired() + K.depth)

    @property
    def delayed(self):
        """Delayed works whose timer has not expired yet."""
        return self._rt.mem.load32(self._timers_fired() + K.ndelayed)

    @property
    def executed(self):
        return self._field("executed")

    @property
    def errors(self):
        return self._field("errors")

    @property
    def current_work(self):
        base = self._base()
        cur = self._rt.mem.load32(base + K.current)
        if not cur:
            return None
        wbase = self._rt.arena.work_off(cur - 1)
        gen = self._rt.mem.load32(wbase + W.gen)
        cls = KthreadDelayedWork if self._rt.mem.load32(wbase + W.kind) == L.WK_DELAYED \
            else KthreadWork
        return cls._attach(self._rt, cur - 1, gen)

    def __reduce__(self):
        return (_restore_worker, (self._rt.runtime_id, self._idx, self._gen))

    def __eq__(self, other):
        return (isinstance(other, KthreadWorker) and other._rt is self._rt
                and other._idx == self._idx and other._gen == self._gen)

    def __hash__(self):
        return hash((self._rt.runtime_id, "worker", self._idx, self._gen))

    def __del__(self):
        if getattr(self, "_owner", False):
            _deferred.append((self._rt, "worker", self._idx, self._gen))

    def __repr__(self):
        try:
            task = self.task
            return f"<KthreadWorker {task.name if task else '(no task)'}>"
        except KthreadError:
            return f"<KthreadWorker slot={self._idx} (stale)>"


def _restore_worker(runtime_id, idx, gen):
    from .._core.runtime import current_runtime
    rt = current_runtime()
    if rt is None or rt.runtime_id != runtime_id:
        raise pickle.UnpicklingError("a kproc.KthreadWorker can only be unpickled in a "
                                     "process of the runtime that created it")
    return KthreadWorker._attach(rt, idx, gen)


def resolve_worker(worker, what="worker"):
    """Check a worker argument; return (runtime, slot offset).

    Raises: TypeError; KthreadError(ESRCH) for a stale (destroyed) worker.
    """
    if not isinstance(worker, KthreadWorker):
        raise TypeError(f"{what} must be a kproc.KthreadWorker, not {type(worker).__name__}")
    try:
        return worker._rt, worker._base()
    except KthreadError as exc:
        if exc.errno == errno.ESRCH:
            raise KthreadError(errno.ESRCH, "the worker was destroyed (stale "
                               "KthreadWorker handle); nothing was touched") from None
        raise
