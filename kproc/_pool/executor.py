"""KthreadPoolExecutor: ``concurrent.futures`` on kthread workers bound one per CPU.

The executor is the face of a pool: argument checks, workers created with
``kthread_create_worker_on_cpu`` (named ``<prefix>/<cpu>``, marked per-CPU,
so ``kproc ps`` and the trace show them like any worker), the hotplug state
(``hotplug``), the collector and watcher threads (``collector``), and
``submit``/``map``/``shutdown`` over the ``Engine``.  Set-up mirrors
teardown: workers, engine (slots, works, completions, memory), hotplug state,
threads, initializers; the collector undoes it in reverse once the pool is
shut down and idle, or broken.

Differences from ProcessPoolExecutor (docs/design.md lists them all): a
function that cannot travel by reference, or arguments that cannot be
pickled, raise TypeError from ``submit()`` itself (SPEC §5) instead of
failing the future; a future stays PENDING until its call starts, so
``cancel()`` succeeds until then; ``max_workers`` beyond the CPU count puts
several workers on a CPU, round-robin; a broken pool raises
``BrokenKthreadPool`` (reachable here as ``executor.BrokenKthreadPool``).

Runs in the caller: any process of the runtime, any of its threads.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from concurrent.futures import Executor

from .._core.checks import check_mask
from .._core.errors import KthreadError, kernel_warnings_dropped
from .._core.runtime import get_runtime
from .._kthread.control import kthread_park, kthread_set_per_cpu, kthread_unpark
from .._sched.completion import complete
from .._workqueue.handles import KthreadWorker
from .._workqueue.worker import kthread_create_worker_on_cpu, kthread_destroy_worker
from . import hotplug
from .codec import encode_call, encode_map_calls
from .collector import Collector, Watcher
from .call import Call
from .engine import Engine, task_of
from .errors import BrokenKthreadPool
from .future import PoolFuture
from .mapping import map_calls
from .remote import KIND_CALL, KIND_INIT, KIND_MAP, run_chunk

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

__all__ = ["KthreadPoolExecutor", "BrokenKthreadPool"]

SLOTS_PER_WORKER = 32
_live_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
_exiting = False


class _Pool:
    """Everything a pool owns, apart from the executor object (so GC can find it idle)."""

    def __init__(self, engine: Engine, state: int) -> None:
        self.engine = engine
        self.state = state
        self.collector: Collector | None = None
        self.watcher: Watcher | None = None
        self.torn_down = False

    def begin_shutdown(self) -> None:
        with self.engine.lock:
            self.engine.shutting = True
        try:
            complete(self.engine.kick)
        except KthreadError:
            pass

    def join(self) -> None:
        c = self.collector
        if c is not None and c is not threading.current_thread():
            c.join()

    def teardown(self) -> None:
        """Undo the set-up in reverse: threads, workers, hotplug state, memory (once)."""
        if self.torn_down:
            return
        self.torn_down = True
        eng = self.engine
        if self.watcher is not None:
            self.watcher.stop()
            if self.watcher.is_alive():
                self.watcher.join()
        if not eng.rt.closed:
            # works still queued on a broken pool are dropped on purpose
            with kernel_warnings_dropped() if eng.broken is not None else \
                    contextlib.nullcontext():
                for w, worker in enumerate(eng.workers):
                    _destroy(eng, w, worker)
            if self.state >= 0:
                hotplug.remove(self.state)
        eng.pm.close()


def _destroy(eng: Engine, w: int, worker: KthreadWorker) -> None:
    try:
        task = worker.task
        if task is not None and eng.parked(w):
            kthread_unpark(task)          # a parked worker would never run the flush
        kthread_destroy_worker(worker)
    except KthreadError:
        pass                              # its kthread or the runtime is gone


def _python_exit() -> None:
    global _exiting
    _exiting = True
    pools = list(_live_pools)
    for p in pools:
        p.begin_shutdown()
    for p in pools:
        p.join()


# as concurrent.futures does: run before the interpreter joins non-daemon threads
_register_atexit: Callable[[Callable[[], None]], None] = getattr(threading, "_register_atexit")
_register_atexit(_python_exit)


def _check_max_workers(max_workers: object, ncpus: int) -> int:
    if max_workers is None:
        return ncpus
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


class KthreadPoolExecutor(Executor):
    """A concurrent.futures Executor whose workers are kthread workers, one per CPU.

    @max_workers: number of workers (default: one per CPU of @cpus); more
    than the CPUs puts several on a CPU, round-robin in ascending CPU order;
    fewer uses the lowest CPUs.  @cpus: the CPUs (default: the housekeeping
    CPUs).  @thread_name_prefix: workers are named ``<prefix>/<cpu>``.
    @initializer, @initargs: called once in each worker before any call; if
    it raises, the pool is broken.
    Context: any process of the runtime (starts the default runtime if none);
    blocks while the workers are created.
    Raises: TypeError / ValueError for bad arguments (before anything is
    created); KthreadError (ENOMEM: tables full) from the creation.
    """

    def __init__(self, max_workers: int | None = None, *, cpus: Iterable[int] | None = None,
                 thread_name_prefix: str = "kpool",
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        rt = get_runtime()
        mask = sorted(rt.housekeeping() if cpus is None else check_mask(rt.topology, cpus))
        n = _check_max_workers(max_workers, len(mask))
        if not isinstance(thread_name_prefix, str):
            raise TypeError("thread_name_prefix must be a str")
        init_payload = None
        if initializer is not None:
            if not callable(initializer):
                raise TypeError("initializer must be a callable")
            init_payload = encode_call(initializer, tuple(initargs), None)
        worker_cpus = [mask[i % len(mask)] for i in range(n)] if n >= len(mask) else mask[:n]
        self._max_workers = n
        name = thread_name_prefix.replace("%", "%%") + "/%u"
        workers: list[KthreadWorker] = []
        try:
            for cpu in worker_cpus:
                workers.append(kthread_create_worker_on_cpu(cpu, 0, name))
                kthread_set_per_cpu(task_of(workers[-1]), cpu)
            engine = Engine(rt, workers, worker_cpus, SLOTS_PER_WORKER)
        except BaseException:
            for worker in workers:
                kthread_destroy_worker(worker)
            raise
        state = hotplug.install(workers, worker_cpus, engine.kick,
                                f"kpool:{thread_name_prefix}")
        pool = self._pool = _Pool(engine, state)
        online = rt.topology.online()
        for w, cpu in enumerate(worker_cpus):
            if cpu not in online:
                kthread_park(task_of(workers[w]))     # per-CPU: parked while its CPU is down
        tasks = [task_of(w) for w in workers]
        pool.watcher = Watcher(engine, [t.pid for t in tasks], [t.name for t in tasks],
                               f"{thread_name_prefix}-watcher")
        pool.collector = Collector(engine, pool.teardown, f"{thread_name_prefix}-collector")
        pool.watcher.start()
        pool.collector.start()
        _live_pools.add(pool)
        weakref.finalize(self, pool.begin_shutdown)
        if init_payload is not None:
            with engine.lock:
                for w in range(n):
                    call = Call(init_payload, KIND_INIT, None)
                    call.worker = w
                    engine.submit_locked(call)

    def _check_open(self) -> Engine:
        eng = self._pool.engine
        if eng.broken is not None:
            raise BrokenKthreadPool(f"the pool is broken: {eng.broken}")
        if eng.shutting:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        return eng

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> PoolFuture:
        """Schedule ``fn(*args, **kwargs)`` on a worker.

        Context: any thread of the caller; does not block.
        Return: a concurrent.futures.Future (PENDING until the call starts).
        Raises: TypeError (fn cannot travel by reference, arguments not
        picklable); RuntimeError after shutdown(); BrokenKthreadPool.
        """
        eng = self._pool.engine
        if eng.broken is not None or eng.shutting or _exiting:
            self._check_open()
        call = Call(encode_call(fn, args, kwargs), KIND_CALL, None)
        fut = call.future = PoolFuture(eng, call)
        with eng.lock:
            if eng.broken is not None or eng.shutting:
                self._check_open()
            eng.submit_locked(call)
        return fut

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """Return an iterator of ``fn(*args)`` for args in zip(*iterables), in order.

        The calls are submitted at once; @timeout (seconds, from this call)
        bounds the wait for each result (TimeoutError); @chunksize calls go
        to a worker together.  Closing the iterator cancels the calls not
        started.  Context: any thread of the caller.
        Raises: ValueError (chunksize < 1), as submit(); the iterator raises
        the call's exception at its place.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else timeout + time.monotonic()   # from the call
        eng = self._check_open()
        if chunksize == 1:
            payloads = encode_map_calls(fn, zip(*iterables))
        else:
            it = zip(*iterables)
            chunks = iter(lambda: tuple(itertools.islice(it, chunksize)), ())
            head = encode_call(run_chunk, (), None)
            payloads = [encode_call(run_chunk, (fn, chunk), None, head) for chunk in chunks]
        results = map_calls(eng, payloads, end, self._check_open)
        if chunksize == 1:
            return results
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls and free the pool once the calls submitted are done.

        @wait: block until then (the workers destroyed); @cancel_futures:
        cancel every call not started yet.
        Context: any thread of the caller (from a done-callback it does not
        wait).  Return: None.  May be called more than once.
        """
        pool = self._pool
        eng = pool.engine
        with eng.lock:
            eng.shutting = True
            pending = list(eng.backlog) + [c for c in eng.slot_call if c is not None]
        if cancel_futures:
            for call in pending:
                if call.finished:
                    continue
                if call.future is not None:
                    call.future.cancel()
                elif call.kind == KIND_MAP:
                    eng.cancel(call)
        pool.begin_shutdown()
        if wait:
            pool.join()
