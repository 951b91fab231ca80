"""The control cpuhp kthread: the mailbox every hotplug call goes through, and
the watch for changes made by someone else (kernel: kernel/cpu.c; the
kernel runs the control side in the caller under ``cpu_add_remove_lock``,
kproc in one ``cpuhp`` kthread, so that callbacks have one home whichever
process asked).

One ``cpuhp`` kthread per runtime, started by the first hotplug call of any
process (``api.ensure_cpuhp``), owns the hotplug state (``machine.Machine``:
the states, the smpboot registrations, ``known``, the per-CPU ``cpuhp/N``
threads).  It serves the mailbox (``record``) one request at a time, so
operations are serialised.

Changes made by someone else: the uevent listener (``uevent``) notes each
CPU online/offline uevent and kicks cpuhp, which replays the notes in
SEQNUM order (``Machine.replay``).  Without netlink (a fake tree) cpuhp
polls the online mask every 5 ms.  Beside netlink a 100 ms tick is a safety
net: a mismatch between the online mask and ``known`` that no uevent
explains is acted on only once two looks a tick apart agree and
``uevent_seqnum`` did not move (the kernel has settled), or at once when
notes were lost (ENOBUFS).  A task's affinity is never a signal: while a CPU
dies a task bound to it reads back an empty mask for tens of ms.  Catching
up failing (a sysfs read failing in the middle of someone else's hotplug)
must not end cpuhp: it warns once per failing streak and retries at the
next short tick.

Races prevented: a request is taken (``busy`` set, ``pending`` cleared)
before it is read, and ``done`` is completed only after the reply is whole;
a requester killed meanwhile leaves a request that is still served, and the
next requester waits for ``busy`` to clear first (see ``api``).
Context: the control cpuhp kthread only.
"""

from __future__ import annotations

import errno
import pickle
import sys
import time
import traceback

from .._core import layout as L
from .._core import trace as _trace
from .._core.errors import KthreadError, warn_on_once
from .._core.runtime import get_runtime
from .._core.funcref import prepare_main
from .._kthread.body import kthread_should_stop
from .._sched.completion import wait_at
from .callbacks import mark_hotplug_process
from .machine import Machine
from .record import (H, OP_DOWN, OP_REGISTER, OP_REMOVE, OP_SETUP, OP_UNREGISTER, OP_UP,
                     get_message, hp_base, put_message)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._core.runtime import Runtime  # typing only

__all__ = ["Cpuhp", "cpuhp_thread"]

POLL_FAKE = 0.005          # s: poll tick where no uevent can tell us
POLL_SAFETY = 0.1          # s: poll tick beside netlink (a missed uevent)


class Cpuhp:
    """The control cpuhp kthread's loop and mailbox."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.hp = hp_base(rt)
        self.machine = Machine(rt)
        self.watch = self.machine.watch
        # (uevent_seqnum, online mask, when) of a mismatch no note explains yet
        self._suspect: tuple[int | None, frozenset[int], float] | None = None

    def sync(self, tick: bool) -> None:
        """Replay the changes made by someone else (see the module doc).
        @tick: the wait timed out (a poll tick), so the online mask is looked at."""
        m, topo = self.machine, self.rt.topology
        if self.watch.sock is None:
            m.reconcile(topo.online())
            return
        m.replay(self.watch.take())
        if not tick and not self.watch.lost:
            return
        seq = self.watch.seqnum()
        online = topo.online()
        now = time.monotonic()
        if online == m.known:
            self._suspect = None
            self.watch.lost = False
            return
        if self.watch.lost or (self._suspect is not None and
                               self._suspect[:2] == (seq, online) and
                               now - self._suspect[2] >= POLL_SAFETY):
            # no own-write marks here: a note still on its way is replayed, and is a
            # no-op if the mask said it already
            self.watch.lost = False
            self._suspect = None
            m.reconcile(online)
            return
        if self._suspect is None or self._suspect[:2] != (seq, online):
            self._suspect = (seq, online, now)

    def serve(self, op: int, args: Any) -> object:
        """Carry out one request (``args`` as the requester pickled them).
        Return: its reply value."""
        m = self.machine
        if op == OP_DOWN:
            return m.down(args)
        if op == OP_UP:
            return m.up(args)
        if op == OP_SETUP:
            section, name, startup, teardown, calls = args
            return m.setup_state(section, name, startup, teardown, calls)
        if op == OP_REMOVE:
            number, calls = args
            m.remove_state(number, calls)
            return None
        if op == OP_REGISTER:
            return m.hotplug_threads.register(args, m.known)
        if op == OP_UNREGISTER:
            m.hotplug_threads.unregister(args)
            return None
        warn_on_once(True, f"cpuhp got an unknown request {op!r}")
        return -errno.EINVAL

    # -- the loop ---------------------------------------------------------------

    def handle_request(self) -> None:
        """Serve the pending request, if any, and complete the requester's ``done``."""
        rt, mem, hp = self.rt, self.rt.mem, self.hp
        if not mem.load32(hp + H.pending):
            return
        mem.store32(hp + H.busy, 1)
        mem.store32(hp + H.pending, 0)
        raw = get_message(rt, "req")
        try:
            if b"_main__" in raw:     # __main__ or __mp_main__
                prepare_main(rt)          # callbacks from the caller's script
            op, args = pickle.loads(raw)
            reply: tuple[str, object] = ("ok", self.serve(op, args))
        except (ValueError, TypeError, OSError, KthreadError) as exc:
            reply = ("raise", (type(exc), exc.args))
        except Exception as exc:
            traceback.print_exc()
            reply = ("raise", (KthreadError, (errno.EFAULT, f"cpuhp failed: {exc!r}")))
        try:
            raw = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            raw = pickle.dumps(("raise", (KthreadError, (errno.EFAULT, repr(reply)))))
        put_message(rt, "rep", raw)
        mem.store32(hp + H.busy, 0)
        rt.waits.completion_complete(hp + H.done, False)

    def loop(self) -> int:
        """Serve requests and catch up with outside changes until kthread_stop().
        Return: 0."""
        rt, mem, hp = self.rt, self.rt.mem, self.hp
        watching = self.watch.start()
        mem.store32(hp + H.netlink, int(watching))
        mem.store32(hp + H.state, L.HP_RUNNING)
        tick = POLL_SAFETY if watching else POLL_FAKE
        retry = False
        while not kthread_should_stop():
            got = wait_at(rt, hp + H.req, POLL_FAKE if retry else tick, "interruptible")
            self.handle_request()
            retry = not self._sync_or_warn(retry, got is None or retry)
            if _trace.ENABLED:
                _trace.flush()          # a kthread killed at shutdown loses nothing
        return 0

    def _sync_or_warn(self, retrying: bool, tick: bool) -> bool:
        """sync(), surviving its failure (see the module doc).  Return: success."""
        try:
            self.sync(tick)
            return True
        except Exception:
            if not retrying:
                sys.stderr.write("kproc: cpuhp: catching up with a hotplug change failed; "
                                 "retrying:\n" + traceback.format_exc())
            return False


def cpuhp_thread(_data: object) -> int:
    """threadfn of the ``cpuhp`` kthread: serve requests and watch hotplug.

    Context: the cpuhp kthread.  Return: 0 when stopped.
    """
    mark_hotplug_process()
    return Cpuhp(get_runtime()).loop()
