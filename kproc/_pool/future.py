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

Its ``threading.Condition`` is made on first use only (a waiter, a
callback, a cancel): a call whose ``result()`` reaps it in the waiting
thread, the common case, never needs one.  Races prevented: the condition
is made under ``_made``, and the waiting thread's direct finish
(``finish``) checks for it under ``_made`` too, so a thread that starts
waiting on the condition meanwhile is always notified.

Runs in the caller, in any of its threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any
from concurrent.futures._base import PENDING, RUNNING, FINISHED

from .channel import RUNNING as SLOT_RUNNING, SLOT
from .call import Call
from .direct import wait_direct
from .engine import Engine

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PoolFuture"]

_made = threading.Lock()        # orders making a future's condition against finish()


class PoolFuture(Future[Any]):
    """A Future of a KthreadPoolExecutor call."""

    def __init__(self, engine: Engine, call: Call) -> None:
        # Future.__init__'s state, but the condition (see the module's doc)
        self._cond: threading.Condition | None = None
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: list[Callable[[Future[Any]], object]] = []
        self._engine = engine
        self._call = call

    @property
    def _condition(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _made:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    @_condition.setter
    def _condition(self, cond: threading.Condition) -> None:
        self._cond = cond

    def finish(self, got: tuple[bool, Any]) -> None:
        """Set the outcome (exception or value) reaped for this future.  Context: the caller."""
        with _made:
            if self._cond is None:        # nobody waits, no callback: no notify needed
                if got[0]:
                    self._exception = got[1]
                else:
                    self._result = got[1]
                self._state = FINISHED
                return
        if got[0]:
            self.set_exception(got[1])
        else:
            self.set_result(got[1])

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
            timeout, got = wait_direct(self._engine, self._call, timeout)
            if got is not None:               # reaped here: no second look at the state
                if got[0]:
                    raise got[1]
                return got[1]
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's exception or None (as Future.exception())."""
        if self._state != FINISHED:
            timeout = wait_direct(self._engine, self._call, timeout)[0]
        return super().exception(timeout)
