"""The pool's two threads in the caller: the collector and the watcher.

The **collector** completes the futures nobody waits on directly (so
``wait()``, ``as_completed()`` and done-callbacks work), moves calls off
parked workers, and tears the pool down once it is shut down and idle.  It
sleeps on the pool's ``kick`` completion after publishing ``HEADER.want``;
workers complete ``kick`` only when ``want`` is set (see ``remote``), as do
the hotplug callbacks, ``cancel`` and a direct waiter leaving a DONE slot.

The **watcher** is blocked in ``poll()`` on a pidfd per worker kthread: a
worker that dies (SIGKILL, ``os._exit``, kthreadd gone) breaks the pool at
once (``Engine.fail``): every pending future fails with BrokenKthreadPool,
the surviving workers are killed (as ProcessPoolExecutor terminates its
processes), and nothing waits for a dead peer.

Races prevented: ``want`` is stored before the collector's scan and the scan
happens before its sleep (the Dekker pairing with ``remote``); the watcher
opens each pidfd and then checks that the worker still lives, so a worker
that died before its pidfd existed is not missed.  Runs in the caller.
"""

from __future__ import annotations

import os
import select
import signal
import threading

from .._core.errors import KthreadError
from .._core.syscalls import pid_alive
from .._sched.completion import wait_for_completion_timeout
from .channel import HEADER
from .engine import Engine
from .errors import BrokenKthreadPool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Collector", "Watcher"]

COLLECT_TICK = 1.0        # s: a collector pass even without a kick (a safety net)
POLL_TICK = 0.002         # s: the same while a map's calls are in slots


class Collector(threading.Thread):
    """Reaps, moves and, at the end, tears down (``teardown`` is called once, here)."""

    def __init__(self, engine: Engine, teardown: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.engine = engine
        self.teardown = teardown

    def run(self) -> None:
        eng = self.engine
        try:
            self._loop()
        except KthreadError as exc:         # the runtime (kthreadd) is gone
            eng.fail(BrokenKthreadPool(f"the pool's kproc runtime is gone: {exc}"))
        finally:
            self.teardown()

    def _loop(self) -> None:
        eng = self.engine
        mem = eng.pm.mem
        while True:
            mem.store32(HEADER.want, 1)
            for got in eng.collect():
                eng.deliver(*got)
            if mem.load32(HEADER.broken) and eng.broken is None:
                self._broken_by_initializer()
            eng.move_from_parked()
            with eng.lock:
                # broken: everything failed already; the runtime closing: its waits
                # are about to go (leave before them)
                if eng.broken is not None or eng.rt.closed or \
                        (eng.shutting and eng.live == 0):
                    return
            # a map's calls wake nobody when done: look for them every POLL_TICK
            wait_for_completion_timeout(eng.kick, POLL_TICK if eng.quiet else COLLECT_TICK)

    def _broken_by_initializer(self) -> None:
        # An initializer failed: its slot holds why; the collect pass above
        # delivered it (Engine.deliver -> fail).  Anything else is a lost cause.
        eng = self.engine
        for got in eng.collect():
            eng.deliver(*got)
        if eng.broken is None:
            eng.fail(BrokenKthreadPool("A worker initializer failed, the pool is not "
                                       "usable anymore"))


class Watcher(threading.Thread):
    """Blocked on the workers' pidfds; a death breaks the pool."""

    def __init__(self, engine: Engine, pids: list[int], names: list[str], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.engine = engine
        self.pids = pids
        self.names = names
        self.rfd, self.wfd = os.pipe2(os.O_CLOEXEC)
        self.pidfds = [os.pidfd_open(pid) for pid in pids]

    def stop(self) -> None:
        """End the thread (it closes its descriptors itself)."""
        try:
            os.write(self.wfd, b"x")
        except OSError:
            pass

    def run(self) -> None:
        try:
            self._watch()
        finally:
            for fd in self.pidfds + [self.rfd, self.wfd]:
                os.close(fd)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        for fd in self.pidfds:
            poller.register(fd, select.POLLIN)
        dead = [i for i, pid in enumerate(self.pids) if not pid_alive(pid)]
        while not dead:
            events = poller.poll()
            if any(fd == self.rfd for fd, _ in events):
                return
            dead = [self.pidfds.index(fd) for fd, _ in events if fd in self.pidfds]
        names = ", ".join(f"{self.names[i]} (pid {self.pids[i]})" for i in dead)
        self.engine.fail(BrokenKthreadPool(
            f"A worker of the pool terminated abruptly ({names}) while the future was "
            "running or pending; the pool is not usable anymore"))
        for i, pid in enumerate(self.pids):
            if i not in dead:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
