"""How kthreadd forks its children (spares in batches, kthreads one at a time).

One path for every child of kthreadd: :func:`fork_children` forks ``n``
children in a row.  With the C extension the forks are bare and no Python
runs between them (``Mem.fork_children``, native/forkloop.c): CPython's own
fork handlers (``PyOS_AfterFork_Child`` and every ``os.register_at_fork``
handler) do not run.  They repair what other threads of the parent could
have left, and kthreadd has no other thread; in a child of kthreadd they
would dirty ~0.5-0.7 MiB of the pages it shares with kthreadd.  What a
kthread can tell of them still happens, each exactly once per kthread:

* handlers registered with ``os.register_at_fork`` in kthreadd after its
  start (the user's modules, imported there for the forks to come:
  :func:`track_fork_handlers`): ``before`` (in reverse order of
  registration) and ``after_in_parent`` in kthreadd once per batch, around
  the batch, as ``os.fork()`` runs them around its fork; ``after_in_child``
  in the child once it becomes a kthread (:func:`settle`, at its claim,
  before its threadfn is loaded); a spare discarded unclaimed runs none;
* ``random`` reseeded in each child, from the kernel (the C
  ``_random.Random.seed``, as ``Lib/random.py``'s own handler does), right
  after its fork, before it can be claimed: two children of one batch draw
  different numbers;
* ``threading.get_native_id()`` the child's own (set in C).

CPython's own handlers (threading's, logging's, kproc's runtime's) do not
run: their state in kthreadd has no other thread to repair for.

Without the C extension (``KPROC_NATIVE=0``), or once a module imported in
kthreadd started a thread there, each child is a plain ``os.fork()``, with
every handler run by CPython as usual, and the child arms PR_SET_PDEATHSIG
and drops kthreadd's descriptors in Python.

Runs in kthreadd and, until it is settled, in each new child.
"""

from __future__ import annotations

import _random
import _thread
import errno
import importlib
import os
import signal
import sys

from .._core import syscalls as _sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.memlike import MemLike  # typing only

__all__ = ["track_fork_handlers", "fork_children", "settle"]

_unsettled = False          # a bare fork's child, until it becomes a kthread
# The C functions under signal's wrappers (no enum conversions: signal.signal's
# cost ~80 KiB of pages in a fresh child); _signal is always there in CPython
# (typeshed has no stub for it).
_csignal = importlib.import_module("_signal")
_SIG_DFL: int = _csignal.SIG_DFL
# (before, after_in_parent, after_in_child) registered with os.register_at_fork in
# kthreadd since track_fork_handlers(): the handlers a bare fork still runs.
_forkers: list[tuple[Callable[[], object] | None, ...]] = []
_register_at_fork = os.register_at_fork


def track_fork_handlers() -> None:
    """kthreadd, before it imports anything of the user's: note every fork handler
    registered from now on, so that a bare fork runs them.

    Context: kthreadd's start-up.
    """
    def register_at_fork(**handlers: Callable[[], object]) -> None:
        _register_at_fork(**handlers)      # checks them; os.fork() runs them
        _forkers.append((handlers.get("before"), handlers.get("after_in_parent"),
                         handlers.get("after_in_child")))
    setattr(os, "register_at_fork", register_at_fork)   # keyword-only, as os's


def _run_handlers(which: int, reverse: bool = False) -> None:
    for handlers in reversed(_forkers) if reverse else _forkers:
        fn = handlers[which]
        if fn is not None:
            try:
                fn()
            except Exception:      # as os.fork(): reported, not raised
                import traceback   # an error path
                traceback.print_exc()


def fork_children(mem: MemLike, n: int, close_fds: tuple[int, ...],
                  comm: bytes = b"") -> tuple[int, list[int]]:
    """Fork ``n`` children of kthreadd in a row (1 <= n <= 16).

    Each child closes ``close_fds``, dies with kthreadd (PR_SET_PDEATHSIG;
    it exits at once if kthreadd died before it armed that), is named
    ``comm`` (bytes, at most 15; empty: kthreadd's name kept) and is
    reseeded; it is *unsettled* until :func:`settle`.
    Context: kthreadd (single-threaded).
    Return: in kthreadd ``(-1, results)``, ``results[i]`` the pid of child
    i, or -errno for the fork that failed (the last one tried), or 0 for
    those not tried after it; in child i ``(i, [])``.
    """
    out = bytearray(4 * n)
    fork = getattr(mem, "fork_children", None)     # the C extension's Mem only
    # A thread in kthreadd (started by a preloaded or threadfn's module) needs
    # CPython's handlers in the child: its locks and thread states are repaired
    # there, as after any os.fork().
    if fork is None or _thread._count():
        return _fork_children_py(n, close_fds, comm, out)
    _run_handlers(0, reverse=True)
    child = -1
    try:
        child = int(fork(n, close_fds, out, comm))
    finally:
        if child < 0:       # kthreadd, a failed fork or a bad argument included
            _run_handlers(1)
    if child >= 0:
        _after_bare_fork()
        return child, []
    return -1, list(memoryview(out).cast("i"))


def _fork_children_py(n: int, close_fds: tuple[int, ...], comm: bytes,
                      out: bytearray) -> tuple[int, list[int]]:
    """The pure-Python form: one os.fork() per child (every handler run by CPython)."""
    results = memoryview(out).cast("i")
    ppid = os.getpid()
    for i in range(n):
        try:
            pid = os.fork()
        except OSError as exc:
            results[i] = -(exc.errno or errno.EAGAIN)
            break
        if pid == 0:
            results.release()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _sys.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != ppid:
                os._exit(0)        # kthreadd died between fork and prctl
            for fd in close_fds:
                os.close(fd)
            if comm:
                _sys.set_comm(comm.decode())
            return i, []
        results[i] = pid
    got = list(results)
    results.release()
    return -1, got


def _after_bare_fork() -> None:
    """In a new bare child: reseed random, and note that it is not settled yet."""
    global _unsettled
    _unsettled = True
    inst = getattr(sys.modules.get("random"), "_inst", None)
    if isinstance(inst, _random.Random):
        _random.Random.seed(inst, None)      # C: a state of its own, from the kernel


def settle() -> None:
    """A child of kthreadd becomes a kthread (its claim, or a fork for the create
    list): after a bare fork, kthreadd's SIGCHLD handling goes and the user's
    ``after_in_child`` handlers run, once.  No-op otherwise (``os.fork()``
    ran them) and the second time.

    Context: a child of kthreadd, before it loads its threadfn.
    """
    global _unsettled
    if not _unsettled:
        return
    _unsettled = False
    _csignal.set_wakeup_fd(-1)
    _csignal.signal(signal.SIGCHLD, _SIG_DFL)
    _run_handlers(2)
