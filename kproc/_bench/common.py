"""What the benchmark cases share: pinning, a file of timestamps every
process maps, and the progress lines a case sends to the harness.

A case runs in a process of its own (``python -m kproc._bench.case``); its
last stdout line is its result as JSON, and lines ``@progress DONE TOTAL``
before it feed the harness's bar.  CLOCK_MONOTONIC is one clock for every
process, so one-way latencies cross processes through ``Stamps``.
Context: a case's process and the kthreads it starts.
"""

from __future__ import annotations

import mmap
import os
import sys
import time

from .meta import CALLER_CPU, PEER_CPU

__all__ = ["CALLER_CPU", "PEER_CPU", "PROGRESS", "pin", "Stamps", "Progress"]

PROGRESS = "@progress"


def pin(cpu: int) -> None:
    """Bind the calling process to ``cpu`` (quietly not, where it cannot be)."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


class Stamps:
    """A file-backed array of int64 slots shared by every process that maps it."""

    def __init__(self, path: str, n: int, create: bool = False) -> None:
        if create:
            with open(path, "wb") as f:
                f.truncate(8 * n)
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, 8 * n)
        self.view = memoryview(self.map).cast("q")

    def close(self) -> None:
        """Unmap and close."""
        self.view.release()
        self.map.close()
        os.close(self.fd)


class Progress:
    """Progress lines for the harness, at most one every 0.25 s."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.last = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.25 or done >= self.total:
            self.last = now
            sys.stdout.write(f"{PROGRESS} {done} {self.total}\n")
            sys.stdout.flush()
