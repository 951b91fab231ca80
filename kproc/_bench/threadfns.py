"""The threadfns of the creation cases, in a module that imports only kproc.

kthreadd imports a threadfn's module before it forks (so that every kthread shares
it): had they stayed in ``create``, kthreadd would load the bench's own modules
(multiprocessing, typing, dataclasses, importlib.metadata...) and the cases would
measure forks of that larger kthreadd, not of kproc's ("A lean kthreadd" in
docs/design.md).
Context: kthreads of the creation cases.
"""

from __future__ import annotations

import time

import kproc

__all__ = ["noop", "creator"]


def noop(_: object) -> int:
    """threadfn: return at once."""
    return 0


def creator(args: tuple[float, kproc.Completion, kproc.Completion]) -> int:
    """threadfn: create→wake→stop kthreads for ``seconds`` once ``go`` is
    complete, then complete ``finished``.  Return: how many."""
    seconds, go, finished = args
    kproc.wait_for_completion(go)
    end, done = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        task = kproc.kthread_create(noop, None, "sustain")
        kproc.wake_up_process(task)
        kproc.kthread_stop(task)
        done += 1
    kproc.complete(finished)
    return done
