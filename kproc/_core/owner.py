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
import subprocess
import time

__all__ = ["OwnerHandles", "read_ready", "main_preparation"]


class OwnerHandles:
    """What only the owner holds: kthreadd's process and the alive pipe's write end.

    Closing the write end is how the owner tells kthreadd to go (it reads
    EOF, kills every kthread and exits); the same happens when the owner
    dies, however it dies.
    """

    __slots__ = ("popen", "alive_w")

    def __init__(self, popen: subprocess.Popen[bytes], alive_w: int) -> None:
        self.popen = popen
        self.alive_w: int | None = alive_w

    def kthreadd_dead(self) -> bool:
        """True once kthreadd has exited (and been reaped here)."""
        return self.popen.poll() is not None

    def close_alive(self) -> None:
        """Close the alive pipe's write end (idempotent)."""
        if self.alive_w is not None:
            try:
                os.close(self.alive_w)
            except OSError:
                pass
            self.alive_w = None

    def stop_kthreadd(self, timeout: float) -> None:
        """Let kthreadd go and reap it, killing it after ``timeout`` seconds."""
        self.close_alive()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def read_ready(fd: int, popen: subprocess.Popen[bytes], timeout: float) -> bytes:
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
        elif popen.poll() is not None:
            return b"".join(chunks) or f"kthreadd exited with {popen.returncode}".encode()


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
