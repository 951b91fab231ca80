"""What only the owner of a runtime holds, and the start-up handshake with kthreadd.

The process that called ``start()`` holds kthreadd's process (it reaps it)
and the write end of the *alive pipe*, whose EOF tells kthreadd to kill every
kthread and exit: on ``shutdown()``, and equally when the owner dies however
it dies (:class:`OwnerHandles`).  Starting kthreadd, the owner hands it how to
import the caller's ``__main__`` (:func:`main_preparation`) and waits for its
one-line verdict on the ready pipe (:func:`read_ready`), watching the process
so that a kthreadd dying at start-up ends the wait.

:func:`start_kthreadd` spawns kthreadd and runs that handshake, crash-safe:
an exception (Ctrl-C) kills kthreadd, and the posix backend's semaphores are
created by kthreadd itself, whose death the owner watches and which watches
the owner's (see there).

Runs in the owner (``runtime.start``); the handles stay with it.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import signal
import struct
import sys
import time

from . import layout as L
from .errors import KthreadError
from .semaphores import new_semaphore_tag, open_semaphores, semaphore_names, unlink_semaphores
from .wait import FutexWaits, PosixWaits, default_spin_ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from .arena import Arena  # typing only

__all__ = ["OwnerHandles", "read_ready", "main_preparation", "start_kthreadd", "BOOT_LEN"]

START_TIMEOUT = 30.0
BOOT_LEN = struct.Struct("=I")      # the bootstrap's length, ahead of its pickle


class OwnerHandles:
    """What only the owner holds: kthreadd's process and the alive pipe's write end.

    Closing the write end is how the owner tells kthreadd to go (it reads
    EOF, kills every kthread and exits); the same happens when the owner
    dies, however it dies.

    kthreadd is watched and reaped here with ``os.waitpid(pid, WNOHANG)`` and
    a pidfd, never with ``Popen.poll()``/``wait()``: those take subprocess's
    private wait lock, which a KeyboardInterrupt at the wrong bytecode leaves
    held (every later poll then blocks, shutdown() included).  The Popen
    object only spawned it; its ``returncode`` is filled in once reaped so
    that subprocess never polls it either.
    """

    __slots__ = ("popen", "pid", "pidfd", "alive_w", "status")

    def __init__(self, popen: subprocess.Popen[bytes], alive_w: int | None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.alive_w = alive_w
        self.status: int | None = None          # wait status once reaped
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            self.pidfd = None                   # kernel < 5.3: poll waitpid instead

    def kthreadd_dead(self) -> bool:
        """True once kthreadd has exited (it is reaped here then).  Never blocks."""
        if self.status is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, -1          # reaped behind our back
        if pid == 0:
            return False
        self._reaped(status)
        return True

    def _reaped(self, status: int) -> None:
        self.status = status
        self.popen.returncode = os.waitstatus_to_exitcode(status) if status >= 0 else -1
        if self.pidfd is not None:
            fd, self.pidfd = self.pidfd, None
            os.close(fd)

    def wait_dead(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for kthreadd to exit.  Return: True if it did."""
        deadline = time.monotonic() + timeout
        while not self.kthreadd_dead():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.pidfd is not None:
                select.select([self.pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.002))
        return True

    def kill(self) -> None:
        """SIGKILL kthreadd unless it was reaped (its kthreads die with it: PDEATHSIG)."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close_alive(self) -> None:
        """Close the alive pipe's write end (idempotent)."""
        if self.alive_w is not None:
            fd, self.alive_w = self.alive_w, None
            try:
                os.close(fd)
            except OSError:
                pass

    def stop_kthreadd(self, timeout: float) -> None:
        """Let kthreadd go and reap it, killing it after ``timeout`` seconds.

        Whatever interrupts the wait (Ctrl-C), kthreadd is killed before this
        returns or raises, and is reaped unless the reaping itself is interrupted.
        """
        try:
            self.close_alive()
            if not self.wait_dead(timeout):
                self.kill()
                self.wait_dead(timeout)
        finally:
            if self.status is None:
                os.kill(self.pid, signal.SIGKILL)   # inline: no call to interrupt first
                self.wait_dead(1.0)


def read_ready(fd: int, handles: OwnerHandles, timeout: float) -> bytes:
    """kthreadd's start-up verdict: the line it writes on the ready pipe ``fd``.

    Context: the owner, in start(); blocks at most ``timeout`` seconds.
    Return: ``b"ok"``, or why kthreadd did not start (its message, its exit,
    or the timeout).
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"timed out waiting for kthreadd"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            data = os.read(fd, 65536)
            if not data:
                return b"".join(chunks) or b"kthreadd exited during start-up"
            chunks.append(data)
            if b"".join(chunks).endswith(b"\n"):
                return b"".join(chunks).rstrip(b"\n")
        elif handles.kthreadd_dead():
            return b"".join(chunks) or f"kthreadd exited with {handles.popen.returncode}".encode()


def main_preparation() -> dict[str, str]:
    """What kthreadd needs to import ``__main__`` as forkserver does (lazily).

    Context: the owner.  Return: multiprocessing's preparation data for the
    main module (empty when there is none to import).
    """
    import multiprocessing.spawn    # here: kthreadd imports this module, and never calls this
    try:
        data = multiprocessing.spawn.get_preparation_data("kthreadd")
    except Exception:
        return {}
    return {k: v for k, v in data.items() if k in ("init_main_from_name", "init_main_from_path")}


def start_kthreadd(arena: Arena, backend: str, sysfs_root: str, preload: tuple[str, ...],
                   trace: str | None) -> tuple[OwnerHandles, FutexWaits | PosixWaits, int]:
    """Spawn kthreadd on ``arena`` and wait for its verdict.

    Crash safety: nothing here can outlive this process.  The arena is an
    anonymous memfd; the posix backend's named semaphores are created by
    kthreadd, which removes their names once the owner has opened them *or*
    once it reads EOF on the boot pipe (the owner died): whichever of the two
    processes survives, the names go.  An exception (Ctrl-C) kills kthreadd.
    Context: the owner, in start().  Return: the handles, the wait backend
    and kthreadd's wake eventfd.  Raises: KthreadError(ECHILD) if kthreadd
    did not start; OSError.
    """
    import subprocess   # here: kthreadd imports this module, and never calls this
    sem_tag = new_semaphore_tag() if backend == "posix" else ""
    fds: list[int] = []
    handles: OwnerHandles | None = None
    waits: FutexWaits | PosixWaits
    try:
        spin_ns = default_spin_ns()      # both backends spin before they sleep
        arena.mem.store32(L.HEADER.spin_ns, spin_ns)
        wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fds.append(wake_fd)
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
        boot_r, boot_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        fds += [alive_r, alive_w, boot_r, boot_w, ready_r, ready_w]
        boot = {
            "sys_path": list(sys.path),
            "kproc_parent": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "preload": preload,
            "main": main_preparation(),
            "backend": backend,
            "sem_tag": sem_tag,
            "sysfs_root": sysfs_root,
            "trace": trace,
        }
        fdargs = dict(arena=arena.fd, wake=wake_fd, alive=alive_r, boot=boot_r, ready=ready_w)
        code = ("import sys; sys.path.insert(0, {!r}); import kproc._kthread.kthreadd as k; "
                "k.main()").format(boot["kproc_parent"])
        argv = [sys.executable, "-c", code] + [f"--{k}={v}" for k, v in fdargs.items()]
        popen = subprocess.Popen(argv, pass_fds=tuple(fdargs.values()), cwd=os.getcwd(),
                                 env=dict(os.environ), stdin=subprocess.DEVNULL)
        handles = OwnerHandles(popen, alive_w)
        fds.remove(alive_w)
        for fd in (alive_r, boot_r, ready_w):
            os.close(fd)
            fds.remove(fd)
        data = pickle.dumps(boot)
        _write_all(boot_w, BOOT_LEN.pack(len(data)) + data)
        status = read_ready(ready_r, handles, START_TIMEOUT)
        if status != b"ok":
            raise KthreadError(errno.ECHILD, "kthreadd failed to start: "
                               + status.decode(errors="replace"))
        if backend == "posix":
            waits = PosixWaits(arena.mem, open_semaphores(sem_tag), L.HEADER.posix_waiters)
            unlink_semaphores(semaphore_names(sem_tag))
        else:
            # The futex backend is only chosen where Mem is the native one (_choose_backend).
            waits = FutexWaits(arena.mem, spin_ns)  # type: ignore[arg-type]
        os.write(boot_w, b"o")     # opened: kthreadd unlinks the names now (if it has not)
        for fd in (boot_w, ready_r):
            os.close(fd)
            fds.remove(fd)
    except BaseException:
        if handles is not None:
            handles.close_alive()
            handles.kill()
            handles.wait_dead(1.0)
        for fd in fds:
            os.close(fd)
        if sem_tag:
            unlink_semaphores(semaphore_names(sem_tag))   # kthreadd died before it could
        raise
    return handles, waits, wake_fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
