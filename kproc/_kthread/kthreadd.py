"""kthreadd: the process that forks every kthread (kernel: kthreadd()).

Started by ``start()`` as a fresh interpreter.  It reads its bootstrap (the
caller's ``sys.path``, preload list, backend...) from a pipe, attaches the
arena, resets its own scheduling policy and affinity (housekeeping CPUs),
ignores asynchronous signals as the kernel's kthreadd does, preloads modules,
freezes the GC heap (so forked kthreads share it copy-on-write instead of
dirtying it), reports "ok" and serves:

* the create list (``kthread_create_list``): pop every request, fork a
  kthread for each (``create_kthread``);
* SIGCHLD: reap kthreads and record how each ended (``reap``: result, exception,
  signal), complete their ``exited`` and ``parked`` completions so nobody
  waits on a dead task, and abandon pending creates of a dead creator;
* EOF on the alive pipe (the owner died or shut down): kill every kthread,
  reap them and exit.

Spare children (``spares``).  A fork costs kthreadd ~0.5-1.5 ms; to keep it
off the creator's path kthreadd keeps ``KPROC_SPARES`` (default 4, more while
creates come fast) children forked in advance, each asleep on its word of the
arena's spare pool.  A creator claims one itself (it gives it its slot) and
the spare becomes the kthread; kthreadd learns the claim on its next wake-up
(before it reaps anything), imports the threadfn's module for later forks, and,
once half the target or fewer are ready and no request is pending, forks the
missing ones in one batch (``fork.fork_children``: bare forks from C, with
no Python between them, native/forkloop.c).  A request that found no
spare ready comes through the create list as before, and kthreadd claims a
spare for it or forks.  Spares forked before kthreadd imported a new module
(threadfn's module, ``__main__``) lack it, so they are discarded when that
happens (a claimed one imports it itself).  Spares are named ``kproc-spare``
and die with kthreadd like kthreads.

It waits in ``select`` on three descriptors (eventfd, alive pipe, SIGCHLD
wake-up pipe), so it is single-threaded and forking is safe.
"""

from __future__ import annotations

import errno
import gc
import importlib
import os
import pickle
import select
import signal
import sys
import time

from .._core import layout as L
from .._core.arena import Arena
from .._core.blobs import read_blob
from .._core.checks import env_number
from .._core.funcref import modules_named, prepare_main
from .._core.owner import BOOT_LEN
from .._core import runtime as _runtime
from .._core import trace as _trace
from .._core.topology import Topology
from .._core.semaphores import create_semaphores, unlink_semaphores
from .._core.wait import FutexWaits, PosixWaits
from . import body as _kthread
from . import fork as _fork
from .reap import Reaper
from .spares import SparePool, spare_wait, warm_up
from . import affinity as _affinity  # noqa: F401  preloaded: every fork has it
from .._sched import completion as _completion  # noqa: F401  preloaded
from . import control as _control  # noqa: F401  preloaded
from .._core import syscalls as _sys  # noqa: F401  preloaded

TYPE_CHECKING = False
if TYPE_CHECKING:
    import struct
    from types import FrameType
    from typing import Any, NoReturn

# Asynchronous signals kthreadd ignores (and kthreads inherit ignored), like
# ignore_signals(current) in the kernel's kthreadd.  Synchronous faults keep
# their default action.
IGNORED_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2",
                   "SIGPIPE", "SIGALRM", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGVTALRM",
                   "SIGPROF", "SIGXCPU", "SIGXFSZ", "SIGPOLL")



def main() -> NoReturn:
    """Entry point: ``python -c 'import kproc._kthread.kthreadd as k; k.main()' --arena=N ...``."""
    args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--"))
    fds = {k: int(v) for k, v in args.items()}
    ready = fds["ready"]
    try:
        daemon = Kthreadd(fds)
    except BaseException as exc:  # report why, then die: start() raises it
        unlink_semaphores(_sem_names)
        import traceback   # an error path
        msg = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        os.write(ready, (msg.replace("\n", " ") + "\n").encode())
        os._exit(1)
    try:
        os.write(ready, b"ok\n")
        os.close(ready)
    except OSError:               # the owner died in start(): nobody to serve
        unlink_semaphores(_sem_names)
        os._exit(1)
    daemon.await_owner()
    daemon.serve()


# Names of the semaphores this kthreadd created, until they are unlinked.
_sem_names: list[str] = []


def _read_boot(fd: int) -> dict[str, Any]:
    """The owner's bootstrap: a length, then its pickle (the owner's own data)."""
    (size,) = read_record(fd, BOOT_LEN)
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the owner closed the boot pipe early")
        data += chunk
    boot: dict[str, Any] = pickle.loads(data)
    return boot


class Kthreadd(Reaper):
    """kthreadd's state: the arena, its children and the descriptors it waits on."""

    def __init__(self, fds: dict[str, int]) -> None:
        _sys.set_comm("kthreadd")
        _fork.track_fork_handlers()
        for name in IGNORED_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
        self.boot_fd = fds["boot"]
        boot = _read_boot(self.boot_fd)
        sys.path[:] = boot["sys_path"]
        if boot["kproc_parent"] not in sys.path:
            sys.path.append(boot["kproc_parent"])
        self.boot: dict[str, Any] = boot
        self.wake_fd = fds["wake"]
        self.alive_fd = fds["alive"]
        self.arena = Arena.attach(fds["arena"])
        self.rt = self._make_runtime(boot)
        # pid -> (slot index, generation); None for a spare at teardown
        self.children: dict[int, tuple[int, int] | None] = {}
        self.inflight: dict[int, int] = {}  # slot index -> creator pid, until published
        self.exiting: dict[int, int] = {}   # pid -> slot index: leaving, not reaped yet
        spares = env_number("KPROC_SPARES")
        self.pool = SparePool(self.rt, DEFAULT_SPARES if spares is None else int(spares))
        self.spare_modules = len(sys.modules)
        self.prepared: set[bytes] = set()   # threadfn pickles whose modules are imported
        _sys.reset_scheduling()
        self._set_allowed_and_affinity()
        for mod in boot["preload"]:
            importlib.import_module(mod)
        self.sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sig_w = sig_w
        signal.set_wakeup_fd(sig_w)
        signal.signal(signal.SIGCHLD, _noop)
        self.arena.mem.store32(L.HEADER.kthreadd_pid, os.getpid())
        self.arena.mem.store32(L.HEADER.alive, 1)
        gc.collect()
        gc.freeze()

    def _make_runtime(self, boot: dict[str, Any]) -> _runtime.Runtime:
        mem = self.arena.mem
        waits: FutexWaits | PosixWaits
        if boot["backend"] == "posix":
            waits = PosixWaits(mem, create_semaphores(_sem_names, boot["sem_tag"]),
                               L.HEADER.posix_waiters)
        else:
            # The owner chose futex, so Mem is the native one here too.
            waits = FutexWaits(mem, mem.load32(L.HEADER.spin_ns))  # type: ignore[arg-type]
        rt = _runtime.Runtime(self.arena, waits, _runtime.Role.KTHREADD, self.wake_fd,
                              os.getpid(), Topology(boot["sysfs_root"]), boot["trace"],
                              boot["main"])
        _runtime.install(rt)
        if boot["trace"]:
            _trace.setup(rt.role.value, boot["trace"])
        return rt

    def _set_allowed_and_affinity(self) -> None:
        """Record the CPUs kthreadd may use and move onto the housekeeping ones.

        The kernel intersects a requested affinity with the cpuset, so asking
        for every host CPU and reading back yields what is allowed here.
        """
        topo = self.rt.topology
        host = topo.host_cpus()
        try:
            os.sched_setaffinity(0, host)
        except OSError:
            pass
        allowed = set(os.sched_getaffinity(0))
        allowed |= topo.possible() - host      # modelled CPUs of a fake tree
        off = L.HEADER.allowed
        self.arena.buf[off:off + L.CPUMASK_BYTES] = L.mask_to_bytes(allowed)
        mask = topo.applicable(self.rt.housekeeping())
        if mask:
            os.sched_setaffinity(0, mask)

    def await_owner(self) -> None:
        """Wait for the owner to have opened the semaphores, then unlink their names.

        The owner writes one byte on the boot pipe once it has opened them; if
        it dies first, the read sees EOF.  Either way the names go now, so a
        SIGKILL of the owner at any point of start() leaves none in /dev/shm.
        """
        try:
            os.read(self.boot_fd, 1)
        finally:
            unlink_semaphores(_sem_names)
            del _sem_names[:]
            os.close(self.boot_fd)

    # -- main loop ---------------------------------------------------------------

    def serve(self) -> NoReturn:
        """Serve creates and reap until the owner goes away; never returns."""
        pool = self.pool
        sweep_at = None          # monotonic time of the sweep a reap by pid owes
        while True:
            wanted = pool.wanted()
            timeout = None if pool.target <= pool.base else IDLE_S
            if sweep_at is not None:
                left = max(0.0, sweep_at - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            try:
                ready, _, _ = select.select([self.wake_fd, self.alive_fd, self.sig_r], [], [],
                                            0 if wanted else timeout)
            except InterruptedError:
                continue
            swept = sweep_at is not None and time.monotonic() >= sweep_at
            if swept:
                sweep_at = None
                self.sweep()
                self.serve_orphaned_requests()
            if not ready:
                if wanted:
                    self.fork_spares(wanted)      # only when no request is pending
                elif not swept:
                    pool.shrink()                 # idle for IDLE_S
                continue
            if self.alive_fd in ready and not os.read(self.alive_fd, 4096):
                self.teardown()
            if self.sig_r in ready:
                _drain(self.sig_r)
                if self.reap() and sweep_at is None:
                    sweep_at = time.monotonic() + SWEEP_S
                self.serve_orphaned_requests()
            if self.wake_fd in ready:
                _drain(self.wake_fd)
                self.collect_claims()
                self.serve_creates()

    def collect_claims(self) -> None:
        """Record every spare a creator claimed since last time as the kthread of
        its slot (kthreadd's children and inflight), and import its threadfn's
        module for the forks to come.  Called before anything is reaped."""
        for pid, idx in self.pool.collect():
            self._record_claim(pid, idx)
        if len(sys.modules) != self.spare_modules:
            self.pool.discard()
            self.spare_modules = len(sys.modules)

    def _record_claim(self, pid: int, idx: int) -> None:
        arena, T = self.arena, L.TASK
        base = arena.task_off(idx)
        self.children[pid] = (idx, arena.mem.load32(base + T.gen))
        self.inflight[idx] = L.unpack_field(arena.buf, base, T, "creator")
        self._prepare_threadfn(idx, base)

    def before_reap(self) -> None:
        self.collect_claims()

    def reaped_spare(self, pid: int) -> None:
        claim = self.pool.reaped(pid)
        if claim is not None:
            self._record_claim(*claim)

    def serve_orphaned_requests(self) -> None:
        """After a reap: serve the create list if a request is still on it.

        A creator queues its request, then wakes kthreadd; a SIGKILL between the
        two (the kernel's creator cannot be stopped there) leaves a request
        nobody woke kthreadd for, abandoned by the reap of its creator
        (``_abandon_creates_of``): served now, its slot is freed at once
        instead of at the next create's wake-up.
        """
        if self.arena.hget("create_head"):
            self.serve_creates()

    def serve_creates(self) -> None:
        """Pop every pending create request and fork a kthread for each."""
        arena, mem, T = self.arena, self.arena.mem, L.TASK
        with arena.locked():
            head = arena.hget("create_head")
            arena.hset("create_head", 0)
            arena.hset("create_tail", 0)
        while head:
            idx = head - 1
            base = arena.task_off(idx)
            head = mem.load32(base + T.next)
            if mem.load32(base + T.handoff) == L.HANDOFF_ABANDONED:
                with arena.locked():
                    arena.free_task(idx)
                continue
            self.pool.missed()
            self.create_kthread(idx, base)

    def create_kthread(self, idx: int, base: int) -> None:
        """Start the kthread for slot ``idx`` (kernel: create_kthread): hand the
        slot to a spare child, or fork one now if there is none."""
        arena, mem, T = self.arena, self.arena.mem, L.TASK
        gen = mem.load32(base + T.gen)
        self._prepare_threadfn(idx, base)
        if len(sys.modules) != self.spare_modules:
            self.pool.discard()
            self.spare_modules = len(sys.modules)
        pid = self.pool.claim(idx)
        if pid is None:
            child, got = _fork.fork_children(mem, 1, self._child_closes())
            if child == 0:
                _kthread.kthread_main(self.rt, idx, gen)   # never returns
            pid = got[0]
            if pid <= 0:
                err = -pid or errno.EAGAIN
                self._fail_create(base, -err, f"fork failed: {os.strerror(err)}")
                return
        self.children[pid] = (idx, gen)
        self.inflight[idx] = L.unpack_field(arena.buf, base, T, "creator")

    def fork_spares(self, entries: list[int]) -> None:
        """Fork a spare child onto each pool entry of ``entries``, each asleep
        until claimed: in a row (``fork.fork_children``: bare, from C, no Python
        in kthreadd between the forks, where the C extension is built)."""
        pool = self.pool
        for entry in entries:
            pool.open(entry)
        child, got = _fork.fork_children(self.arena.mem, len(entries), self._child_closes(),
                                         b"kproc-spare")
        if child >= 0:
            self._spare(entries[child])
        for entry, pid in zip(entries, got):
            if pid > 0:
                pool.add(entry, pid)
            else:
                pool.unopen(entry)
                if pid < 0:
                    pool.target = pool.base = 0      # out of processes: stop trying

    def _spare(self, entry: int) -> NoReturn:
        """In a spare child: sleep on ``entry`` until claimed, then become the
        kthread of the slot it was given (discarded: exit)."""
        warm_up(self.rt)
        idx = spare_wait(self.rt, self.pool.offset(entry))
        if idx is None:
            os._exit(0)                         # discarded
        base = self.arena.task_off(idx)
        _kthread.kthread_main(self.rt, idx, self.arena.mem.load32(base + L.TASK.gen))

    def _prepare_threadfn(self, idx: int, base: int) -> None:
        """Import threadfn's module here once, so that every later fork has it.

        The pickle is *read*, never run (no ``pickle.loads`` here): unpickling
        runs whatever a ``__reduce__`` names, and kthreadd must not run user
        code (an ``os._exit`` there would take every kthread down).  Only the
        kthread itself unpickles its threadfn and data.
        """
        try:
            _, fn_pickle, data_pickle = read_blob(self.arena, idx, base)
            if fn_pickle in self.prepared and b"_main__" not in data_pickle:
                return
            if len(self.prepared) < 256:
                self.prepared.add(fn_pickle)
            if b"__main__" in fn_pickle or b"_main__" in data_pickle:
                prepare_main(self.rt)
            for mod in modules_named(fn_pickle):
                if mod not in sys.modules and mod != "__main__":
                    importlib.import_module(mod)
        except BaseException:
            pass  # the kthread itself reports the failure to its creator

    def _child_closes(self) -> tuple[int, ...]:
        return (self.alive_fd, self.sig_r, self.sig_w)

    def teardown(self) -> NoReturn:
        """The owner is gone: kill every kthread, reap them, and exit."""
        self.arena.mem.store32(L.HEADER.alive, 0)
        for pid, idx in self.pool.collect():
            base = self.arena.task_off(idx)
            self.children[pid] = (idx, self.arena.mem.load32(base + L.TASK.gen))
        for pid in self.pool.live():
            self.children.setdefault(pid, None)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            entry = self.children.pop(pid, None)
            if entry is not None:
                self._record_exit(pid, status, *entry, teardown=True)
        if _trace.ENABLED:
            _trace.flush()
        os._exit(0)


IDLE_S = 2.0       # kthreadd idle this long with extra spares: back to the base count
# A reap by pid owes a sweep over every child (a kill may have shared its
# SIGCHLD) within this many seconds; more SIGCHLDs meanwhile add none.
SWEEP_S = 0.02
DEFAULT_SPARES = 4     # KPROC_SPARES unset: spares kept ready (refilled at half)


def _noop(signum: int, frame: FrameType | None) -> None:
    pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def read_record(fd: int, record: struct.Struct) -> tuple[Any, ...]:
    """Read one fixed-size ``struct.Struct`` record from a pipe, whole.

    A short read loops until the record is complete (a pipe may split a
    write only past PIPE_BUF, but a signal may cut a read short).
    Return: the unpacked tuple.  Raises: EOFError if the writer closed first.
    """
    data = b""
    while len(data) < record.size:
        chunk = os.read(fd, record.size - len(data))
        if not chunk:
            raise EOFError(f"pipe closed after {len(data)} of {record.size} bytes")
        data += chunk
    return record.unpack(data)
