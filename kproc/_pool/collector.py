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
import time

from .._core.errors import KthreadError
from .._core.syscalls import pid_alive
from .._sched.completion import wait_for_completion_timeout
from .channel import HEADER
from .call import Call
from .channel import CANCELLED, DONE, QUEUED, SLOT
from .engine import Engine
from .remote import KIND_INIT, KIND_MAP
from .errors import BrokenKthreadPool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Collector", "Watcher", "collect", "move_from_parked"]

COLLECT_TICK = 1.0        # s: a collector pass even without a kick (a safety net)
POLL_TICK = 0.002         # s: the same while a map's calls are in slots


def collect(eng: Engine) -> list[tuple[Call, int, bytes]]:
    """Reap every DONE slot nobody waits on directly (the collector's pass).

    Context: the collector thread.  Return: (call, code, bytes) of each, to deliver.
    """
    pm, mem = eng.pm, eng.pm.mem
    out = []
    now = time.monotonic()
    with eng.lock:
        for slot, call in enumerate(eng.slot_call):
            if call is None or (call.run is not None and call.run.active(now)):
                continue
            off = pm.slot_off(slot)
            if mem.load32(off + SLOT.state) == DONE and \
                    (not mem.load32(off + SLOT.direct) or call.kind == KIND_INIT):
                got = eng.reap_locked(slot)
                if got is not None:
                    out.append(got)
    return out


def move_from_parked(eng: Engine) -> int:
    """Move the calls queued on parked workers back to the backlog's head, then feed.

    Context: the collector thread.  Return: how many calls were moved.
    """
    moved: list[Call] = []
    with eng.lock:
        todo = []
        for slot, call in enumerate(eng.slot_call):
            if call is None or call.kind == KIND_INIT or \
                    not eng.parked(eng.slot_worker[slot]):
                continue
            off = eng.pm.slot_off(slot)
            if eng.pm.mem.cmpxchg32(off + SLOT.state, QUEUED, CANCELLED) == QUEUED:
                todo.append((slot, call))
    for slot, call in todo:
        if call.kind != KIND_MAP:
            eng.unqueue(slot, eng.works[slot])
        with eng.lock:
            eng.free_slot_locked(slot)
            call.slot = -1
            moved.append(call)
    with eng.lock:
        eng.backlog.extendleft(reversed(moved))
        eng.feed_locked()
    return len(moved)


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
            if eng.rt.closed:               # before teardown: no call is left pending
                eng.fail(BrokenKthreadPool("the pool's kproc runtime was shut down"))
        except KthreadError as exc:         # the runtime (kthreadd) is gone
            eng.fail(BrokenKthreadPool(f"the pool's kproc runtime is gone: {exc}"))
        finally:
            self.teardown()

    def _loop(self) -> None:
        eng = self.engine
        mem = eng.pm.mem
        while True:
            mem.store32(HEADER.want, 1)
            for got in collect(eng):
                eng.deliver(*got)
            if mem.load32(HEADER.broken) and eng.broken is None:
                self._broken_by_initializer()
            move_from_parked(eng)
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
        for got in collect(eng):
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
        self.fds_lock = threading.Lock()
        self.closed = False

    def stop(self) -> None:
        """End the thread (it closes its descriptors itself).

        A no-op once the thread has ended by itself (a death): its descriptors are
        closed then, and their numbers may already name another file.
        """
        with self.fds_lock:
            if self.closed:
                return
            try:
                os.write(self.wfd, b"x")
            except OSError:
                pass

    def run(self) -> None:
        try:
            self._watch()
        finally:
            with self.fds_lock:
                self.closed = True
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
        for i, pidfd in enumerate(self.pidfds):
            if i not in dead:
                try:       # through the pidfd: never another process that got the pid
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
