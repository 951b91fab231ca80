"""What only the owner of a runtime holds, and the start-up handshake with kthreadd.

The process that called ``start()`` holds kthreadd's process (it reaps it)
and the write end of the *alive pipe*, whose EOF tells kthreadd to kill every
kthread and exit: on ``shutdown()``, and equally when the owner dies however
it dies (:class:`OwnerHandles`).  Starting kthreadd, the owner hands it how to
import the caller's ``__main__`` (:func:`main_preparation`) and waits for its
one-line verdict on the ready pipe (:func:`read_ready`), watching the process
so that a kthreadd dying at start-up ends the wait.

Runs in the owner (``runtime.start``); the handles stay with it.
"""

from __future__ import annotations

import multiprocessing.spawn
import os
import select
import signal
import subprocess
import time

__all__ = ["OwnerHandles", "read_ready", "main_preparation"]


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
    try:
        data = multiprocessing.spawn.get_preparation_data("kthreadd")
    except Exception:
        return {}
    return {k: v for k, v in data.items() if k in ("init_main_from_name", "init_main_from_path")}
