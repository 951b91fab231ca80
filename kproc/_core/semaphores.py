"""The posix backend's semaphores: their names, their creation and removal, and
closing them only when no thread of this process is inside a call on them.

``sem_close()`` while another thread is blocked in ``sem_timedwait()`` (or in
``sem_post()``) on the semaphore is undefined (``sem_close(3)``), and it
crashed the process: a pool's collector thread, still tearing down, outlived
``shutdown()``.  :class:`SemaphoreUsers` keeps the set of this process's
threads inside a semaphore call; ``close()`` marks it closing, and the last
thread to leave closes the semaphores.  A thread about to enter sees the mark
and stays out.  Under the GIL each step is one atomic operation on a set or a
flag, in this order, so a thread and ``close()`` never both miss each other.

Runs in the owner (open, unlink), kthreadd (create, unlink) and every process
using the posix backend (the users).
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    import posix_ipc

__all__ = ["POSIX_CHANNELS", "SemaphoreUsers", "create_semaphores", "open_semaphores",
           "semaphore_names", "new_semaphore_tag", "unlink_semaphores"]

POSIX_CHANNELS = 64


class SemaphoreUsers:
    """Which threads of this process are inside a call on ``sems``, and closing them
    once none is (the list is emptied when they are closed)."""

    def __init__(self, sems: list[posix_ipc.Semaphore]) -> None:
        self.sems = sems
        self._using: set[int] = set()
        self._closing = False
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """This thread is about to call a semaphore.

        Context: any thread.  Return: True (go on, then call :meth:`leave`), or
        False once closing (stay out; nothing to leave).
        """
        tid = threading.get_ident()
        self._using.add(tid)
        if self._closing:
            self.leave(tid)
            return False
        return True

    def leave(self, tid: int | None = None) -> None:
        """This thread's semaphore call returned; the last to leave a closing set
        closes it.  Context: the thread that entered."""
        self._using.discard(threading.get_ident() if tid is None else tid)
        if self._closing and not self._using:
            self._close_now()

    def busy(self) -> bool:
        """Return: whether a thread of this process is inside a semaphore call."""
        return bool(self._using)

    def close(self) -> None:
        """Close the semaphores now, or as the last thread inside a call leaves.
        Context: the runtime's shutdown, any thread."""
        self._closing = True
        if not self._using:
            self._close_now()

    def _close_now(self) -> None:
        with self._lock:
            sems = self.sems[:]
            del self.sems[:]
        for sem in sems:
            try:
                sem.close()
            except Exception:
                pass


def semaphore_names(tag: str) -> list[str]:
    """The names of the posix backend's POSIX_CHANNELS semaphores for ``tag``."""
    return [f"{tag}-{i}" for i in range(POSIX_CHANNELS)]


def new_semaphore_tag() -> str:
    """A fresh, unguessable prefix for a runtime's semaphore names."""
    return f"/kproc-{os.getpid()}-{os.urandom(8).hex()}"


def create_semaphores(names: list[str], tag: str) -> list[posix_ipc.Semaphore]:
    """Create the posix backend's POSIX_CHANNELS semaphores (0600) named after ``tag``.

    Context: kthreadd, at start-up (the process whose death the owner
    watches and that watches the owner's, so a survivor removes the names).
    Each name is appended to ``names`` as it is created, so that the caller
    can unlink them all whatever happens.  Return: the open semaphores.
    """
    import posix_ipc      # only the posix backend needs it
    sems: list[posix_ipc.Semaphore] = []
    for name in semaphore_names(tag):
        sems.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=0))
        names.append(name)
    return sems


def open_semaphores(tag: str) -> list[posix_ipc.Semaphore]:
    """Open the semaphores kthreadd created for ``tag``.  Context: the owner, in start()."""
    import posix_ipc      # only the posix backend needs it
    return [posix_ipc.Semaphore(name) for name in semaphore_names(tag)]


def unlink_semaphores(names: list[str]) -> None:
    """Remove the semaphores' names: the open ones live on, nothing stays in /dev/shm."""
    if not names:
        return
    import posix_ipc      # only the posix backend needs it
    for name in names:
        try:
            posix_ipc.unlink_semaphore(name)
        except posix_ipc.ExistentialError:
            pass
