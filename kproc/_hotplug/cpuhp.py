"""The cpuhp kthread: the hotplug state machine (kernel: kernel/cpu.c,
``_cpu_down``, ``_cpu_up``, ``cpuhp_invoke_callback_range``, with
``cpu_online_mask``; one kthread in place of the kernel's per-CPU ``cpuhp/N``
threads).

One ``cpuhp`` kthread per runtime, started by the first hotplug call of any
process (``api.ensure_cpuhp``), owns the hotplug state: the registered
states (``callbacks.States``), the smpboot registrations
(``hotplug_threads``) and ``known``, the CPUs whose startups have run.  It
serves the mailbox (``record``): one request at a time, so callbacks always
run here and operations are serialised (the kernel's ``cpu_add_remove_lock``).

States, in order: ``smpboot:threads`` (per-CPU threads parked / created and
unparked), ``kthreads:online`` (kthreads_online_cpu: node, preferred and
bound affinities re-applied), then the dynamic states.  ``down`` runs the
teardowns in reverse, then writes ``0`` to ``cpuN/online`` (Topology
retries EBUSY/EAGAIN and reads it back); ``up`` writes ``1``, then runs the
startups in order.  A callback failing half way rolls back the ones already
run; a failed startup also takes the CPU offline again, and a failed
teardown leaves it online (nothing was written yet).

CPUs changed by someone else: after every wake-up ``sync`` compares
``known`` with the online mask.  cpuhp wakes on a request, on a CPU uevent
(``uevent.UeventWatch``) and on a poll tick: 5 ms on a fake tree (no uevents
there) or without netlink, 100 ms as a safety net beside it.  A CPU that
vanished gets its teardowns after the fact, one that appeared its startups,
one that went down and came back between two looks both (the uevent notes
tell it); so per-CPU threads are parked, re-bound and affinities repaired
whoever changed the CPU.  ``sync`` failing (a sysfs read failing in the
middle of someone else's hotplug) must not end cpuhp: it warns once per
failing streak and is retried at the next short tick.

Races prevented: a request is taken (``busy`` set, ``pending`` cleared)
before it is read, and ``done`` is completed only after the reply is whole;
a requester killed meanwhile leaves a request that is still served, and the
next requester waits for ``busy`` to clear first (see ``api``).
Context: the cpuhp kthread only.
"""

from __future__ import annotations

import errno
import pickle
import sys
import time
import traceback

from .._core import layout as L
from .._core.errors import KthreadError, warn_on_once
from .._core.runtime import get_runtime
from .._kthread.affinity import kthreads_offline_cpu, kthreads_online_cpu
from .._core.funcref import prepare_main
from .._kthread.body import kthread_should_stop
from .._sched.completion import wait_at
from .callbacks import HotplugState, States
from .hotplug_threads import HotplugThreads
from .record import (H, OP_DOWN, OP_REGISTER, OP_REMOVE, OP_SETUP, OP_UNREGISTER, OP_UP,
                     get_message, hp_base, put_message, store_known)
from .uevent import UeventWatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._core.runtime import Runtime  # typing only

__all__ = ["Cpuhp", "cpuhp_thread"]

POLL_FAKE = 0.005          # s: poll tick where no uevent can tell us
POLL_SAFETY = 0.1          # s: poll tick beside netlink (a missed uevent)


class Cpuhp:
    """The state the cpuhp kthread owns (kernel: cpuhp_hp_states, cpu_online_mask)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.hp = hp_base(rt)
        self.hotplug_threads = HotplugThreads(rt)
        # kthreads_offline_cpu() runs after the offline write, in down() and
        # sync(): the CPU must be gone before affinities are narrowed.
        threads = self.hotplug_threads
        self.states = States([HotplugState(1, "smpboot:threads", threads.startup,
                                           threads.teardown),
                              HotplugState(2, "kthreads:online", self._affine_online, None)])
        self.known = rt.topology.online()
        store_known(rt, self.known)
        self.watch = UeventWatch(rt)

    def _affine_online(self, cpu: int) -> int:
        kthreads_online_cpu(self.rt, cpu, self.hotplug_threads.unparked_pids(cpu))
        return 0

    # -- operations -----------------------------------------------------------

    def down(self, cpu: int) -> int:
        """_cpu_down().  Return: 0, 1 if already offline, a negative errno."""
        topo = self.rt.topology
        self.sync()
        if not topo.is_online(cpu):
            return 1
        topo.check_not_last(cpu)
        t0 = time.monotonic_ns()
        rc = self.states.run_teardowns(cpu)
        t1 = time.monotonic_ns()
        if rc < 0:
            return rc
        try:
            topo.set_online(cpu, False)
        except OSError as exc:
            self.states.run_startups(cpu)
            return -(exc.errno or errno.EIO)
        self.watch.took_offline(cpu)
        self.known = self.known - {cpu}
        store_known(self.rt, self.known)
        t2 = time.monotonic_ns()
        kthreads_offline_cpu(self.rt, cpu)
        self._times(t1 - t0, t2 - t1, time.monotonic_ns() - t2)
        return 0

    def up(self, cpu: int) -> int:
        """_cpu_up().  Return: 0, 1 if already online, a negative errno."""
        topo = self.rt.topology
        self.sync()
        if topo.is_online(cpu) and cpu in self.known:
            return 1
        t0 = time.monotonic_ns()
        try:
            topo.set_online(cpu, True)
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        t1 = time.monotonic_ns()
        rc = self.states.run_startups(cpu)
        if rc < 0:
            try:
                topo.set_online(cpu, False)
                self.watch.took_offline(cpu)
            except OSError:
                pass
            return rc
        self.known = self.known | {cpu}
        store_known(self.rt, self.known)
        self._times(0, t1 - t0, time.monotonic_ns() - t1)
        return 0

    def _times(self, teardown: int, write: int, startup: int) -> None:
        buf, hp = self.rt.buf, self.hp
        L.pack_field(buf, hp, H, "teardown_ns", teardown)
        L.pack_field(buf, hp, H, "write_ns", write)
        L.pack_field(buf, hp, H, "startup_ns", startup)

    def sync(self) -> None:
        """Run the callbacks for CPUs someone else took down or brought up.

        A CPU that went down and came back between two looks is caught by
        an offline uevent numbered after cpuhp last saw it offline: it gets
        its teardowns and then its startups, as if both changes had been
        seen.  A task's affinity is no such signal: while a CPU dies (and
        while it comes up) a task bound to it reads back a broken mask for
        tens of ms although the online mask still lists the CPU, and taking
        that for a down-and-up stormed the callbacks.
        """
        topo = self.rt.topology
        seq = self.watch.seqnum()
        online = topo.online()
        bounced = self.watch.missed_bounces(seq, online, self.known)
        if online == self.known and not bounced:
            return
        now = time.monotonic_ns()
        for cpu in sorted((self.known - online) | bounced):
            self.states.run_teardowns(cpu)
            self.known = self.known - {cpu}
            kthreads_offline_cpu(self.rt, cpu)
        for cpu in sorted(online - self.known):
            self.known = self.known | {cpu}
            self.states.run_startups(cpu)
        store_known(self.rt, self.known)
        L.pack_field(self.rt.buf, self.hp, H, "event_ns", now)
        self.rt.mem.fetch_add64(self.hp + H.events, 1)

    def serve(self, op: int, args: Any) -> object:
        """Carry out one request (``args`` as the requester pickled them).
        Return: its reply value."""
        if op == OP_DOWN:
            return self.down(args)
        if op == OP_UP:
            return self.up(args)
        if op == OP_SETUP:
            name, startup, teardown = args
            return self.states.add(name, startup, teardown, self.known)
        if op == OP_REMOVE:
            self.states.remove(args, self.known)
            return None
        if op == OP_REGISTER:
            return self.hotplug_threads.register(args, self.known)
        if op == OP_UNREGISTER:
            self.hotplug_threads.unregister(args)
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
        """cpuhp_thread_fun(): serve requests and catch up with outside changes
        until kthread_stop().  Return: 0."""
        rt, mem, hp = self.rt, self.rt.mem, self.hp
        watching = self.watch.start()
        mem.store32(hp + H.netlink, int(watching))
        mem.store32(hp + H.state, L.HP_RUNNING)
        tick = POLL_SAFETY if watching else POLL_FAKE
        retry = False
        while not kthread_should_stop():
            wait_at(rt, hp + H.req, POLL_FAKE if retry else tick, "interruptible")
            self.handle_request()
            retry = not self._sync_or_warn(retry)
        return 0

    def _sync_or_warn(self, retrying: bool) -> bool:
        """sync(), surviving its failure (see the module doc).  Return: success."""
        try:
            self.sync()
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
    return Cpuhp(get_runtime()).loop()
