"""One call of a pool, as the caller's side keeps it (``Call``), and what it needs of
the call's future (``CallFuture``) and of its map (``MapRun``).

A call is created by ``submit()`` (with its ``future.PoolFuture``), by
``map()`` (KIND_MAP: no future, its outcome kept in ``result`` for the
map's iterator) or by the pool itself (KIND_INIT: an initializer, tied to
one worker).  The engine moves it from its backlog into a call slot and
marks it ``finished`` once it has an outcome, was cancelled, or the pool
broke.  Runs in the caller.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

__all__ = ["ACTIVE_S", "Call", "CallFuture", "MapRun"]

ACTIVE_S = 0.002                # a map's iterator seen this recently reaps its own calls


class CallFuture(Protocol):
    """What the engine uses of a call's future (``future.PoolFuture``)."""

    def finish(self, got: tuple[bool, Any]) -> None: ...

    def cancel(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def done(self) -> bool: ...

    def set_exception(self, exception: BaseException | None) -> None: ...


class MapRun:
    """What the calls of one ``map()`` share: when their consumer last looked."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = time.monotonic()

    def active(self, now: float) -> bool:
        """True while the map's iterator reaps its calls itself (seen within ACTIVE_S)."""
        return now - self.seen < ACTIVE_S


class Call:
    """One call of the pool, from submit to its outcome."""

    __slots__ = ("payload", "kind", "future", "slot", "big", "finished", "worker", "result",
                 "run")

    def __init__(self, payload: bytes, kind: int, future: CallFuture | None,
                 run: MapRun | None = None) -> None:
        self.payload = payload
        self.kind = kind
        self.future = future
        self.slot = -1          # its slot while it has one
        self.big: tuple[int, int, int] | None = None   # our side-channel fd, inode, length
        self.finished = False
        self.worker = -1        # for KIND_INIT: the worker it must run on
        self.result: tuple[bool, Any] | None = None     # KIND_MAP: its outcome, once reaped
        self.run = run          # KIND_MAP: its map
