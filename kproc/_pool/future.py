"""The pool's Future: a ``concurrent.futures.Future`` that knows its call slot.

It is a real ``concurrent.futures.Future`` (``wait()``, ``as_completed()``,
callbacks all work on it: the collector thread completes it).  Three methods
do more than the base class:

* ``result()`` / ``exception()`` wait for the call's slot in the calling
  thread (spinning first, on a futex after) and reap it there, so a round
  trip costs no hop through another thread;
* ``cancel()`` succeeds exactly until the call starts: it takes the slot
  from QUEUED to CANCELLED by compare-and-swap (the worker's start is the
  other compare-and-swap) and takes the work off the worker's list with
  ``kthread_cancel_work_sync()``; it never waits for a running call;
* ``running()`` reads the slot, since the future stays PENDING until its call
  starts in the worker (ProcessPoolExecutor marks it RUNNING once it is
  handed to its call queue).

Runs in the caller, in any of its threads.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any
from concurrent.futures._base import PENDING, RUNNING, FINISHED

from .channel import RUNNING as SLOT_RUNNING, SLOT
from .engine import Call, Engine

__all__ = ["PoolFuture"]


class PoolFuture(Future[Any]):
    """A Future of a KthreadPoolExecutor call."""

    _engine: Engine
    _call: Call

    def _started(self) -> bool:
        slot = self._call.slot
        if slot < 0:
            return False
        pm = self._engine.pm
        return bool(pm.mem.load32(pm.slot_off(slot) + SLOT.state) == SLOT_RUNNING)

    def cancel(self) -> bool:
        """Cancel the call if it has not started.

        Context: any thread of the caller; never waits for a running call.
        Return: True if the call will never run (now CANCELLED), False if it
        started or finished.
        """
        with self._condition:
            if self._state in (RUNNING, FINISHED):
                return False
            if self._state != PENDING:
                return True
        if not self._engine.cancel(self._call):
            with self._condition:
                if self._state == PENDING:
                    self._state = RUNNING
            return False
        return super().cancel()

    def running(self) -> bool:
        """Return: True while the call runs in its worker."""
        if super().running():
            return True
        if self._state == PENDING and self._started():
            with self._condition:
                if self._state == PENDING:
                    self._state = RUNNING
            return True
        return False

    def result(self, timeout: float | None = None) -> Any:
        """The call's return value (as Future.result()); the waiting thread reaps it.

        Raises: the call's exception (its remote traceback as ``__cause__``),
        CancelledError, TimeoutError, BrokenKthreadPool.
        """
        if self._state != FINISHED:
            timeout, got = self._engine.wait_direct(self._call, timeout)
            if got is not None:               # reaped here: no second look at the state
                if got[0]:
                    raise got[1]
                return got[1]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's exception or None (as Future.exception())."""
        if self._state != FINISHED:
            timeout = self._engine.wait_direct(self._call, timeout)[0]
        return super().exception(timeout)
