"""The runtime: one arena, one kthreadd, and this process's view of them.

``start()`` builds a runtime: it creates the arena (``_arena``), picks the
wait backend (``_wait``), and starts kthreadd as a fresh interpreter (exec'd,
not forked from the caller) that inherits the arena's memfd, the eventfd that
wakes it (kernel: ``wake_up_process(kthreadd_task)``), and the read end of an
*alive pipe* whose write end only the owner holds (``owner``).  When the owner dies,
however it dies, kthreadd reads EOF, kills every kthread and exits; kthreads
carry ``PR_SET_PDEATHSIG(SIGKILL)`` so a killed kthreadd takes them along.

Every process of a runtime has exactly one :class:`Runtime` object, in one of
three roles: ``owner`` (the process that called ``start()``), ``kthreadd``, or
``kthread`` (inherited by fork from kthreadd, with ``self_idx`` naming its own
task slot).  The first API call in a process with no runtime starts a default
one implicitly.

Liveness: blocking waits tick every ``TICK_NS`` and call
:meth:`Runtime.check_alive`, so the death of kthreadd ends them with
``KthreadError(ESRCH)`` within a tick instead of hanging.
"""

from __future__ import annotations

import atexit
import enum
import errno
import os
import signal
import sys
import threading
import warnings

from . import layout as L
from .arena import Arena
from .native import load_mem_class
from .checks import check_environment, check_int, env_choice
from .errors import KthreadError
from . import trace as _trace
from .topology import MAX_CPUS, Topology
from .owner import OwnerHandles, start_kthreadd
from .wait import FutexWaits, PosixWaits

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Iterable
    from typing import Literal

    from .memlike import MemLike  # typing only

__all__ = ["Runtime", "Role", "start", "shutdown", "get_runtime", "current_runtime", "TICK_NS"]

TICK_NS = 100_000_000          # how often a blocking wait checks its peers
BACKENDS = {"futex": 1, "posix": 2}
DEFAULT_MAX_KTHREADS = 1024
DEFAULT_MAX_WORKS = 4096

_lock = threading.RLock()
_runtime: Runtime | None = None


class Role(enum.Enum):
    """What this process is in its runtime."""
    OWNER = "owner"             # called start(); owns kthreadd and the alive pipe
    KTHREADD = "kthreadd"
    KTHREAD = "kthread"         # a child of kthreadd running a threadfn
    FORKED = "forked"           # a plain fork of the owner: not part of the runtime


class Runtime:
    """One process's handle on a runtime.  Use :func:`start` to make one.

    Three parts, each set where the process learns it:

    * the shared view, the same in every process: ``arena``, ``mem`` and
      ``buf`` (its atomics and its mapping), ``waits`` (the backend),
      ``topology``, ``wake_fd`` (kthreadd's eventfd), ``kthreadd_pid``,
      ``trace`` (path or None), ``main_prep`` (how to import the caller's
      ``__main__``, kthreadd and kthreads only);
    * this process's ``role`` (:class:`Role`) and, in a kthread, its own
      slot: ``self_idx`` / ``self_gen`` / ``self_base``;
    * ``owner``: the :class:`OwnerHandles` (owner only, else None).

    ``wq_fast`` caches the work-queue C fast paths of this process
    (``kproc._workqueue``); ``closed`` is set by :meth:`shutdown`.
    """

    __slots__ = ("arena", "mem", "buf", "waits", "topology", "wake_fd", "kthreadd_pid",
                 "trace", "main_prep", "role", "self_idx", "self_gen", "self_base",
                 "owner", "wq_fast", "closed")

    def __init__(self, arena: Arena, waits: FutexWaits | PosixWaits, role: Role, wake_fd: int,
                 kthreadd_pid: int, topology: Topology, trace: str | None = None,
                 main_prep: dict[str, str] | None = None) -> None:
        self.arena = arena
        self.mem: MemLike = arena.mem
        self.buf: mmap.mmap = arena.buf
        self.waits = waits
        self.topology = topology
        self.wake_fd = wake_fd
        self.kthreadd_pid = kthreadd_pid
        self.trace = trace
        self.main_prep = main_prep
        self.role = role
        self.self_idx: int | None = None
        self.self_gen: int | None = None
        self.self_base: int | None = None
        self.owner: OwnerHandles | None = None
        self.wq_fast: tuple[Callable[..., int], Callable[..., int]] | tuple[None, None] | None \
            = None
        self.closed = False

    @property
    def runtime_id(self) -> int:
        """The runtime's random 63-bit identity (handles carry it when pickled)."""
        return self.arena.runtime_id

    @property
    def backend(self) -> str:
        """Name of the wait backend, ``"futex"`` or ``"posix"``."""
        return self.waits.name

    def become_kthread(self, idx: int, gen: int) -> int:
        """Turn kthreadd's view, inherited by fork, into kthread ``idx``'s.

        Context: a child of kthreadd, right after fork.  Return: its slot offset.
        """
        self.role = Role.KTHREAD
        self.self_idx, self.self_gen = idx, gen
        self.self_base = base = self.arena.task_off(idx)
        return base

    # -- liveness ----------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise ``KthreadError(ESRCH)`` if this runtime's kthreadd is gone.

        Context: any process of the runtime; does not block.
        """
        if self.closed:
            raise KthreadError(errno.ESRCH, "the kproc runtime was shut down")
        if self.role is Role.OWNER:
            dead = self.owner.kthreadd_dead()  # type: ignore[union-attr]  # set for OWNER
        elif self.role is Role.KTHREAD:
            dead = os.getppid() != self.kthreadd_pid
        else:
            dead = False
        if not dead and self.mem.load32(L.HEADER.alive) == 0 and self.role is not Role.KTHREADD:
            dead = True
        if dead:
            raise KthreadError(errno.ESRCH, "kthreadd died: the kproc runtime is gone")

    def wake_kthreadd(self) -> None:
        """Kick kthreadd to look at the create list (kernel: wake_up_process(kthreadd))."""
        try:
            os.eventfd_write(self.wake_fd, 1)
        except BlockingIOError:
            pass  # counter saturated: kthreadd has a wake-up pending anyway

    def allowed(self) -> frozenset[int]:
        """CPUs kthreadd may use (its cpuset), as recorded at start."""
        off = L.HEADER.allowed
        return L.bytes_to_mask(self.buf[off:off + L.CPUMASK_BYTES])

    def housekeeping(self) -> frozenset[int]:
        """housekeeping_cpumask(HK_TYPE_KTHREAD): online − isolated − nohz_full, ∩ allowed."""
        return self.topology.housekeeping(self.allowed())

    # -- teardown ----------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop kthreadd (which kills the remaining kthreads) and release everything.

        Context: the owner process.  Kthreads still alive are killed, not
        stopped: call kthread_stop() on those whose result matters first.
        Idempotent.  Raises: KthreadError(EPERM) from another process.
        """
        if self.closed:
            return
        if self.role is not Role.OWNER:
            raise KthreadError(errno.EPERM, "only the process that called kproc.start() "
                               "can shut the runtime down")
        owner = self.owner
        assert owner is not None          # set for OWNER
        try:
            self.closed = True
            owner.stop_kthreadd(timeout)
            if self.trace:
                _trace.merge(self.trace)
        finally:
            # Even when interrupted (a second Ctrl-C in atexit): kthreadd must
            # be dead before the arena is unmapped, or a lock this process
            # holds could never be marked abandoned and kthreadd would wait
            # on it forever.  os.kill inline: no Python call to interrupt first.
            if owner.status is None:
                os.kill(owner.pid, signal.SIGKILL)
            _forget(self)
            sleeping = self.waits.in_use()      # another thread of ours, in a wait
            self.waits.close()
            os.close(self.wake_fd)
            self.arena.close(keep_mapping=sleeping)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (f"<kproc.Runtime {self.role.value} backend={self.backend} "
                f"kthreadd={self.kthreadd_pid}{' closed' if self.closed else ''}>")


def _forget(rt: Runtime) -> None:
    global _runtime
    with _lock:
        if _runtime is rt:
            _runtime = None


def current_runtime() -> Runtime | None:
    """This process's runtime, or None."""
    return _runtime


def get_runtime() -> Runtime:
    """This process's runtime, starting a default one if there is none.

    Context: any.  Return: the Runtime.  Raises: whatever :func:`start` raises.
    """
    rt = _runtime
    if rt is not None and not rt.closed:
        return rt
    with _lock:
        if _runtime is None or _runtime.closed:
            return start()
        return _runtime


def _choose_backend(backend: str | None) -> str:
    """The backend start() uses: the one asked for (or ``KPROC_BACKEND``, or futex).

    Without the C extension (not built at install time, or ``KPROC_NATIVE=0``)
    the futex backend runs on the pure-Python path, which is the posix
    backend's: one RuntimeWarning says so, here, before anything starts.
    Only an explicit ``"posix"`` asks for that path and is not warned about.
    """
    if backend is None:
        backend = env_choice("KPROC_BACKEND")
    if backend is None:
        backend = "futex"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be None, 'futex' or 'posix', not {backend!r}")
    if backend == "futex" and load_mem_class() is None:
        why = ("switched off by KPROC_NATIVE=0" if os.environ.get("KPROC_NATIVE") == "0"
               else "not built (no C compiler when kproc was installed)")
        warnings.warn(f"kproc: the C extension kproc._native is {why}; the futex backend "
                      "runs on the pure-Python path (posix semaphores, lock-based atomics: "
                      "slower waits). Reinstall kproc where a C compiler is available for "
                      "the fast path, or pass backend='posix' to choose this path "
                      "explicitly.", RuntimeWarning, stacklevel=3)
        backend = "posix"
    return backend


def start(*, max_kthreads: int = DEFAULT_MAX_KTHREADS, max_works: int = DEFAULT_MAX_WORKS,
          backend: Literal["futex", "posix"] | None = None,
          sysfs_root: str | os.PathLike[str] = "/sys", preload: Iterable[str] = (),
          trace: str | os.PathLike[str] | None = None) -> Runtime:
    """Start a kproc runtime: the arena and its kthreadd.

    @max_kthreads: task table size (kthreads alive or not yet recycled at once).
    @max_works: work item slots (and user completions: max(1024, max_works)).
    @backend: ``"futex"`` (the default) or ``"posix"``; None reads
              ``KPROC_BACKEND``.  Without the C extension the futex backend
              runs on the posix backend's pure-Python path, with one
              ``RuntimeWarning``.
    @sysfs_root: where CPU topology and hotplug files are read (``fake_sysfs``).
    @preload: module names kthreadd imports once, so that forks are cheap.
    @trace: path of a Chrome trace-event JSON file to write, or None
            (``KPROC_TRACE`` is read when None).

    Context: any process that has no runtime yet; blocks until kthreadd runs
    (tens of milliseconds).
    Return: the :class:`Runtime` (a context manager that shuts it down).
    Raises: ``KthreadError(EBUSY)`` if this process already has a runtime;
    ``TypeError``/``ValueError`` on bad arguments; ``OSError`` from the OS;
    ``RuntimeError`` if not on Linux.
    """
    global _runtime
    if not sys.platform.startswith("linux"):
        raise RuntimeError("kproc runs on Linux only (it needs fork, memfd, futexes, "
                           f"sched_setaffinity and sysfs); this is {sys.platform}")
    check_environment()
    check_int("max_kthreads", max_kthreads, 1, 1 << 16)
    check_int("max_works", max_works, 1, 1 << 22)
    backend_name = _choose_backend(backend)
    if isinstance(preload, str) or not all(isinstance(m, str) for m in preload):
        raise TypeError("preload must be an iterable of module names")
    if not isinstance(sysfs_root, (str, os.PathLike)):
        raise TypeError("sysfs_root must be a path")
    root = os.path.abspath(os.fspath(sysfs_root))
    topology = Topology(root)
    possible = topology.possible()
    if not possible:
        raise ValueError(f"{root} holds no CPU topology "
                         "(devices/system/cpu/possible is missing or empty)")
    if max(possible) >= MAX_CPUS:
        raise ValueError(f"sysfs_root {root} names CPU {max(possible)}; kproc handles "
                         f"CPUs 0-{MAX_CPUS - 1}")
    name = "trace"
    if trace is None:
        trace = os.environ.get("KPROC_TRACE") or None
        name = "environment variable KPROC_TRACE"
    trace_path = None if trace is None else _check_trace_path(trace, name)
    with _lock:
        if _runtime is not None and not _runtime.closed:
            raise KthreadError(errno.EBUSY, "this process already has a kproc runtime "
                               f"({_runtime!r}); shut it down first")
        _runtime = rt = _start_owner(max_kthreads, max_works, backend_name, root,
                                     tuple(preload), trace_path, topology)
        return rt


def _check_trace_path(trace: object, name: str = "trace") -> str:
    """The trace file's absolute path; its folder must exist and be writable,
    and the events folder beside it must be ours or absent (``trace.check_path``)."""
    if not isinstance(trace, (str, os.PathLike)) or not os.fspath(trace):
        raise TypeError(f"{name} must be a file path, not {trace!r}")
    trace = os.path.abspath(os.fspath(trace))
    folder = os.path.dirname(trace)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={trace!r}: folder {folder!r} does not exist or is "
                         "not writable")
    if os.path.isdir(trace):
        raise ValueError(f"{name}={trace!r} is a folder, not a file")
    _trace.check_path(trace)
    return trace


def _start_owner(max_kthreads: int, max_works: int, backend: str, sysfs_root: str,
                 preload: tuple[str, ...], trace: str | None, topology: Topology) -> Runtime:
    """Create the arena and start kthreadd (``owner.start_kthreadd``: crash-safe)."""
    arena = Arena.create(max_kthreads, max(1024, max_works), max_works, BACKENDS[backend])
    try:
        handles, waits, wake_fd = start_kthreadd(arena, backend, sysfs_root, preload, trace)
    except BaseException:
        arena.close()
        raise
    rt = Runtime(arena, waits, Role.OWNER, wake_fd, handles.pid, topology, trace)
    rt.owner = handles
    if trace:
        _trace.setup(rt.role.value, trace)
    atexit.register(_atexit_shutdown, rt)
    return rt


def _atexit_shutdown(rt: Runtime) -> None:
    if not rt.closed and rt.role is Role.OWNER:
        try:
            rt.shutdown()
        except BaseException:
            pass      # a second Ctrl-C: shutdown() has killed kthreadd anyway


def shutdown() -> None:
    """Shut down this process's runtime, if it owns one (see :meth:`Runtime.shutdown`).

    Context: the owner process.  No-op when there is no runtime.
    """
    rt = _runtime
    if rt is not None:
        rt.shutdown()


def _after_fork_in_child() -> None:
    # A plain fork of the owner or of a kthread is not part of the runtime
    # (docs/design.md, "Faults"): like multiprocessing's child, which inherits
    # neither its parent's children nor its finalizers, it inherits no
    # runtime.  It must not keep the owner's alive pipe open (kthreadd would
    # outlive the owner); its handles raise ESRCH; its first API call (or
    # start()) makes a runtime of its own.  kthreadd's own forks (kthreads,
    # spares) happen in Role.KTHREADD and are left alone.
    global _runtime
    rt = _runtime
    if rt is None or rt.role not in (Role.OWNER, Role.KTHREAD):
        return
    if rt.owner is not None:
        rt.owner.close_alive()
        if rt.owner.pidfd is not None:
            os.close(rt.owner.pidfd)
            rt.owner.pidfd = None
        rt.owner.status = -1               # not this process's child: never reap or kill it
    rt.role = Role.FORKED
    rt.closed = True
    _runtime = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def install(rt: Runtime) -> None:
    """Make ``rt`` this process's runtime (kthreadd and kthreads)."""
    global _runtime
    _runtime = rt
