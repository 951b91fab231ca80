"""CPU hotplug state machine (kernel: kernel/cpu.c, cpuhp_setup_state,
cpuhp_remove_state, cpu_down, cpu_up, the cpuhp/N threads).

One ``cpuhp`` kthread per runtime, created by the first hotplug call of any
process, owns the hotplug state: the list of registered states (callbacks),
the smpboot registrations (``_smpboot``) and the mask of CPUs it has brought
up (``known``).  Every operation, whichever process asks, is a request in a
shared mailbox (``HOTPLUG`` record plus request/reply areas) served by that
kthread, so callbacks always run in ``cpuhp`` and operations are serialised
(the kernel's ``cpu_add_remove_lock``).

States, in order: ``smpboot:threads`` (per-CPU threads parked / created and
unparked), ``kthreads:online`` (kthreads_online_cpu: node, preferred and
bound affinities re-applied), then the dynamic states of
``cpuhp_setup_state`` in registration order.  ``cpu_down`` runs teardowns in
reverse order, then writes ``0`` to ``cpuN/online`` (retrying EBUSY/EAGAIN
and reading it back); ``cpu_up`` writes ``1``, then runs startups in order.
A callback failing half way rolls back the ones already run (and the write,
for a teardown failure nothing was written yet).

External hotplug.  ``cpuhp`` compares ``known`` with the online mask after
every wake-up.  It wakes on a request, on a kobject uevent (a thread of the
cpuhp process reads a ``NETLINK_KOBJECT_UEVENT`` socket and completes the
mailbox's ``req``), and on a poll tick: 5 ms on a fake tree (no uevents
there) or when netlink is unavailable, 100 ms as a safety net otherwise.
A CPU that vanished gets its teardowns after the fact, one that appeared its
startups, so per-CPU threads are parked, re-bound and affinities repaired
whoever changed the CPU.

Races prevented: the request lock is a pid in shared memory (``owner``),
taken by compare-and-swap and stolen from a dead holder; a requester waits
until ``busy`` is clear before posting, so a request abandoned by a killed
caller is finished before the next one is written.  Every wait watches the
cpuhp kthread: its death ends it with ``KthreadError(ESRCH)``, and the next
call starts a fresh cpuhp (registrations are lost with the old one).
"""

import errno
import os
import pickle
import socket
import sys
import threading
import time
import traceback

from .._core import layout as L
from .._sched.completion import wait_at
from .._core.errors import KthreadError
from .._core.funcref import check_callback, prepare_main
from .._core.runtime import get_runtime
from .._core.syscalls import pid_alive
from .._core.topology import _read as _read_sysfs

__all__ = ["cpu_down", "cpu_up", "cpuhp_setup_state", "cpuhp_remove_state", "request",
           "hp_base", "hotplug_stats", "ensure_cpuhp"]

H = L.HOTPLUG
T = L.TASK
NETLINK_KOBJECT_UEVENT = 15
UEVENT_SEQNUM = "/sys/kernel/uevent_seqnum"
POLL_FAKE = 0.005          # s: poll tick where no uevent can tell us
POLL_SAFETY = 0.1          # s: poll tick beside netlink (a missed uevent)
MAX_DYN_STATES = 40        # as the kernel's CPUHP_AP_ONLINE_DYN range
DYN_BASE = 1000            # first dynamic state number returned
CALLBACK_EXCEPTION = -errno.EFAULT
START_TIMEOUT = 10.0

OP_SETUP, OP_REMOVE, OP_DOWN, OP_UP, OP_REGISTER, OP_UNREGISTER, OP_PING = range(1, 8)


# -- caller side: the mailbox ---------------------------------------------------------

def hp_base(rt):
    """Offset of the HOTPLUG record."""
    return rt.arena.params.hotplug


def _cpuhp_dead(rt):
    """True if the recorded cpuhp kthread is gone (or never was)."""
    mem, hp = rt.mem, hp_base(rt)
    idx = mem.load32(hp + H.task_idx)
    if not idx:
        return True
    base = rt.arena.task_off(idx - 1)
    return mem.load32(base + T.gen) != mem.load32(hp + H.task_gen) or \
        mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD, L.SLOT_FREE)


def ensure_cpuhp(rt):
    """Start the cpuhp kthread unless it runs; wait until it serves.

    Context: any process of the runtime but cpuhp; blocks (one kthread
    creation the first time).  Raises: KthreadError from the creation.
    """
    from .._kthread.create import kthread_run
    mem, hp = rt.mem, hp_base(rt)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        state = mem.load32(hp + H.state)
        if state == L.HP_RUNNING and not _cpuhp_dead(rt):
            return
        if state == L.HP_RUNNING or (state == L.HP_STARTING and
                                     not pid_alive(mem.load32(hp + H.starter))):
            mem.cmpxchg32(hp + H.state, state, L.HP_NONE)     # dead: start again
            continue
        if state == L.HP_NONE and mem.cmpxchg32(hp + H.state, L.HP_NONE,
                                                L.HP_STARTING) == L.HP_NONE:
            L.pack_field(rt.buf, hp, H, "starter", os.getpid())
            try:
                task = kthread_run(cpuhp_thread, None, "cpuhp")
            except BaseException:
                mem.store32(hp + H.state, L.HP_NONE)
                raise
            mem.store32(hp + H.task_gen, task._gen)
            mem.store32(hp + H.task_idx, task._idx + 1)
        rt.check_alive()
        if time.monotonic() > deadline:
            raise KthreadError(errno.ETIMEDOUT, "the cpuhp kthread did not start")
        time.sleep(0.0005)


def _lock(rt):
    mem, hp, me = rt.mem, hp_base(rt), os.getpid()
    while True:
        owner = mem.load32(hp + H.owner)
        if owner == 0 or not pid_alive(owner):
            if mem.cmpxchg32(hp + H.owner, owner, me) == owner:
                return
            continue
        if owner == me:
            raise KthreadError(errno.EDEADLK, "a hotplug call from inside a hotplug "
                               "call of the same process would wait for itself")
        rt.check_alive()
        time.sleep(0.0002)


def _unlock(rt):
    rt.mem.cmpxchg32(hp_base(rt) + H.owner, os.getpid(), 0)


def request(op, args):
    """Post request ``op`` with ``args`` to cpuhp and wait for the reply.

    Context: any process of the runtime except the cpuhp kthread; blocks.
    Return: the reply value.  Raises: what cpuhp raised for the request
    (ValueError, PermissionError, OSError); KthreadError(ESRCH) if cpuhp
    or kthreadd died; KthreadError(EDEADLK) from the cpuhp kthread itself.
    """
    rt = get_runtime()
    if rt.self_base is not None and rt.self_base == _cpuhp_base(rt):
        raise KthreadError(errno.EDEADLK, "hotplug calls from a hotplug callback (the "
                           "cpuhp kthread) would wait for themselves")
    raw = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
    if len(raw) > L.HP_MSG_MAX:
        raise ValueError("hotplug request too large")
    ensure_cpuhp(rt)
    mem, hp = rt.mem, hp_base(rt)
    _lock(rt)
    try:
        _wait_word(rt, hp + H.busy)
        rt.buf[rt.arena.params.hp_req:rt.arena.params.hp_req + len(raw)] = raw
        mem.store32(hp + H.req_len, len(raw))
        mem.store32(hp + H.done + L.COMPLETION.done, 0)
        mem.store32(hp + H.pending, 1)
        rt.waits.completion_complete(hp + H.req, False)
        verdict = wait_at(rt, hp + H.done, None, "uninterruptible", _peer(rt))
        if verdict:
            raise KthreadError(errno.ESRCH, "the cpuhp kthread died; hotplug state "
                               "(registered states, per-CPU threads) is lost")
        n = mem.load32(hp + H.rep_len)
        kind, value = pickle.loads(bytes(rt.buf[rt.arena.params.hp_rep:
                                                rt.arena.params.hp_rep + n]))
    finally:
        _unlock(rt)
    if kind == "raise":
        exc_type, args = value
        raise exc_type(*args)
    return value


def _cpuhp_base(rt):
    idx = rt.mem.load32(hp_base(rt) + H.task_idx)
    return rt.arena.task_off(idx - 1) if idx else None


def _peer(rt):
    def check():
        return -errno.ESRCH if _cpuhp_dead(rt) else None
    return check


def _wait_word(rt, off):
    """Wait until the word at ``off`` is 0, watching cpuhp."""
    while rt.mem.load32(off):
        if _cpuhp_dead(rt):
            rt.mem.store32(off, 0)
            raise KthreadError(errno.ESRCH, "the cpuhp kthread died")
        time.sleep(0.0002)


def hotplug_stats():
    """Counters of this runtime's cpuhp: {events, event_ns, teardown_ns, write_ns,
    startup_ns, netlink, running}.  Context: any; never blocks."""
    rt = get_runtime()
    hp = hp_base(rt)
    out = {k: L.unpack_field(rt.buf, hp, H, k)
           for k in ("events", "event_ns", "teardown_ns", "write_ns", "startup_ns")}
    out["netlink"] = bool(rt.mem.load32(hp + H.netlink))
    out["running"] = rt.mem.load32(hp + H.state) == L.HP_RUNNING and not _cpuhp_dead(rt)
    return out


# -- argument checks (in the caller, before anything changes) -------------------------

def _check_hotplug_cpu(rt, cpu):
    rt.topology.check_hotpluggable(cpu)
    rt.topology.check_may_write(cpu)


# -- public API -------------------------------------------------------------------------

def cpu_down(cpu):
    """cpu_down(): take ``cpu`` offline, running the teardown callbacks first.

    Teardowns run in the cpuhp kthread in reverse order of registration
    (user states, then affinities, then per-CPU threads are parked), then
    ``0`` is written to ``cpuN/online`` (retried on EBUSY/EAGAIN, read back).
    A teardown failing rolls back (startups of the states already torn
    down, in order) and nothing is written.
    Context: any process of the runtime but cpuhp; blocks.
    Return: 0 when the CPU went offline; 1 if it already was offline
    (nothing run); a negative errno after a rollback: the failing callback's
    return value (-EFAULT if it raised), or the errno of a failed write.
    Raises: TypeError (not an int); ValueError (not possible, not
    hot-pluggable, last online CPU); PermissionError (real sysfs without
    root); KthreadError(ESRCH) if cpuhp or kthreadd died.
    """
    rt = get_runtime()
    _check_hotplug_cpu(rt, cpu)
    rt.topology.check_not_last(cpu)
    return request(OP_DOWN, cpu)


def cpu_up(cpu):
    """cpu_up(): bring ``cpu`` online, then run the startup callbacks.

    ``1`` is written to ``cpuN/online`` (retried on EBUSY/EAGAIN, read back);
    then in the cpuhp kthread, in order: per-CPU threads are created (parked)
    where missing, unparked and re-bound; node, preferred and bound
    affinities are re-applied (kthreads_online_cpu); user states' startups.
    A startup failing rolls back the ones run (teardowns in reverse) and
    takes the CPU offline again.
    Context: any process of the runtime but cpuhp; blocks.
    Return: 0 when the CPU came online; 1 if it already was online (nothing
    run); a negative errno after a rollback, as cpu_down().
    Raises: as cpu_down() (but no last-CPU check).
    """
    rt = get_runtime()
    _check_hotplug_cpu(rt, cpu)
    return request(OP_UP, cpu)


def cpuhp_setup_state(name, startup, teardown):
    """cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, ...): add a dynamic hotplug state.

    @name: a label ("subsys:what").  @startup, @teardown: module-level
    functions ``f(cpu) -> int`` (0 or a negative errno; None counts as 0), or
    None.  They run in the cpuhp kthread.  ``startup`` is run at once on
    every online CPU, in CPU order; if it fails on one, ``teardown`` is run
    on those already done and the state is not added.
    Context: any process of the runtime but cpuhp; blocks.
    Return: the state number (>= 1000, for cpuhp_remove_state()); a negative
    errno: startup's failure (-EFAULT if it raised) or -ENOSPC when 40
    dynamic states exist.  Raises: TypeError (bad name, callback not
    callable or not passable by reference).
    """
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str")
    check_callback("startup", startup)
    check_callback("teardown", teardown)
    return request(OP_SETUP, (name, startup, teardown))


def cpuhp_remove_state(state):
    """cpuhp_remove_state(): run ``teardown`` on every online CPU (reverse CPU
    order) and remove the state.

    Context: any process of the runtime but cpuhp; blocks.
    Return: None.  Raises: TypeError (not an int); ValueError (no such state).
    """
    if isinstance(state, bool) or not isinstance(state, int):
        raise TypeError(f"state must be an int, not {type(state).__name__}")
    return request(OP_REMOVE, state)


# -- the cpuhp kthread -----------------------------------------------------------------

class _State:
    __slots__ = ("number", "name", "startup", "teardown")

    def __init__(self, number, name, startup, teardown):
        self.number, self.name, self.startup, self.teardown = number, name, startup, teardown


def invoke(fn, cpu, *args):
    """Run a callback; Return: its int result (None → 0), -EFAULT if it raised."""
    if fn is None:
        return 0
    try:
        ret = fn(cpu, *args)
    except Exception:
        sys.stderr.write(f"kproc: cpuhp: callback {getattr(fn, '__qualname__', fn)!r} "
                         f"for CPU {cpu} raised:\n{traceback.format_exc()}")
        sys.stderr.flush()
        return CALLBACK_EXCEPTION
    if ret is None:
        return 0
    return ret if isinstance(ret, int) and not isinstance(ret, bool) else -errno.EINVAL


def _run_with_rollback(cpu, steps):
    """Run each ``(do, undo)`` of ``steps`` for ``cpu`` until one fails; then the
    undos of those done, newest first.  Return: 0, or the failing callback's rc."""
    done = []
    for do, undo in steps:
        rc = invoke(do, cpu)
        if rc < 0:
            for back in reversed(done):
                invoke(back, cpu)
            return rc
        done.append(undo)
    return 0


class Cpuhp:
    """The state the cpuhp kthread owns (kernel: cpuhp_hp_states, cpu_online_mask)."""

    def __init__(self, rt):
        from .smpboot import Smpboot
        self.rt = rt
        self.hp = hp_base(rt)
        self.smpboot = Smpboot(rt)
        self.builtin = [_State(1, "smpboot:threads", self.smpboot.startup,
                               self.smpboot.teardown),
                        _State(2, "kthreads:online", self._affine_online,
                               self._affine_offline)]
        self.dyn = []
        self.next_number = DYN_BASE
        self.known = rt.topology.online()
        self._store_known()
        self.sock = None
        # Offline uevents not yet looked at, as (SEQNUM, cpu), appended by the
        # listener thread; and per CPU the uevent_seqnum when cpuhp last saw
        # it offline (or took it offline): an offline uevent numbered after
        # that, for a CPU online now and in known, is a down-and-up missed.
        self.offline_events = []
        self.events_lock = threading.Lock()
        self.offline_seen = {}

    def states(self):
        return self.builtin + self.dyn

    def _store_known(self):
        off = self.hp + H.known
        self.rt.buf[off:off + L.CPUMASK_BYTES] = L.mask_to_bytes(self.known)

    def _affine_online(self, cpu):
        from .._kthread.affinity import kthreads_online_cpu
        kthreads_online_cpu(self.rt, cpu, self.smpboot.unparked_pids(cpu))
        return 0

    def _affine_offline(self, cpu):
        return 0      # done after the write (kthreads_offline_cpu): see down()

    # -- running callbacks ----------------------------------------------------

    def run_teardowns(self, cpu, states):
        """Teardowns in reverse; on failure, startups of those done.  Return: rc."""
        return _run_with_rollback(cpu, [(st.teardown, st.startup) for st in reversed(states)])

    def run_startups(self, cpu, states):
        """Startups in order; on failure, teardowns of those done.  Return: rc."""
        return _run_with_rollback(cpu, [(st.startup, st.teardown) for st in states])

    # -- operations -----------------------------------------------------------

    def down(self, cpu):
        from .._kthread.affinity import kthreads_offline_cpu
        topo = self.rt.topology
        self.sync()
        if not topo.is_online(cpu):
            return 1
        topo.check_not_last(cpu)
        t0 = time.monotonic_ns()
        rc = self.run_teardowns(cpu, self.states())
        t1 = time.monotonic_ns()
        if rc < 0:
            return rc
        try:
            topo.set_online(cpu, False)
        except OSError as exc:
            self.run_startups(cpu, self.states())
            return -(exc.errno or errno.EIO)
        self._took_offline(cpu)
        self.known = self.known - {cpu}
        self._store_known()
        t2 = time.monotonic_ns()
        kthreads_offline_cpu(self.rt, cpu)
        self._times(t1 - t0, t2 - t1, time.monotonic_ns() - t2)
        return 0

    def up(self, cpu):
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
        rc = self.run_startups(cpu, self.states())
        if rc < 0:
            try:
                topo.set_online(cpu, False)
                self._took_offline(cpu)
            except OSError:
                pass
            return rc
        self.known = self.known | {cpu}
        self._store_known()
        self._times(0, t1 - t0, time.monotonic_ns() - t1)
        return 0

    def _times(self, teardown, write, startup):
        buf, hp = self.rt.buf, self.hp
        L.pack_field(buf, hp, H, "teardown_ns", teardown)
        L.pack_field(buf, hp, H, "write_ns", write)
        L.pack_field(buf, hp, H, "startup_ns", startup)

    def setup_state(self, name, startup, teardown):
        if len(self.dyn) >= MAX_DYN_STATES:
            return -errno.ENOSPC
        done = []
        for cpu in sorted(self.known):
            rc = invoke(startup, cpu)
            if rc < 0:
                for back in reversed(done):
                    invoke(teardown, back)
                return rc
            done.append(cpu)
        st = _State(self.next_number, name, startup, teardown)
        self.next_number += 1
        self.dyn.append(st)
        return st.number

    def remove_state(self, number):
        st = next((s for s in self.dyn if s.number == number), None)
        if st is None:
            raise ValueError(f"no hotplug state {number} (states are the numbers "
                             "cpuhp_setup_state() returned)")
        for cpu in sorted(self.known, reverse=True):
            invoke(st.teardown, cpu)
        self.dyn.remove(st)

    def sync(self):
        """Run the callbacks for CPUs someone else took down or brought up.

        A CPU that went down and came back between two looks is caught by
        an offline uevent numbered after cpuhp last saw it offline: it gets
        its teardowns and then its startups, as if both changes had been
        seen.  A task's affinity is no such signal: while a CPU dies (and
        while it comes up) a task bound to it reads back a broken mask for
        tens of ms although the online mask still lists the CPU, and taking
        that for a down-and-up stormed the callbacks.
        """
        from .._kthread.affinity import kthreads_offline_cpu
        topo = self.rt.topology
        seq = self._seqnum()
        online = topo.online()
        bounced = self._missed_bounces(seq, online)
        if online == self.known and not bounced:
            return
        now = time.monotonic_ns()
        for cpu in sorted((self.known - online) | bounced):
            self.run_teardowns(cpu, self.states())
            self.known = self.known - {cpu}
            kthreads_offline_cpu(self.rt, cpu)
        for cpu in sorted(online - self.known):
            self.known = self.known | {cpu}
            self.run_startups(cpu, self.states())
        self._store_known()
        L.pack_field(self.rt.buf, self.hp, H, "event_ns", now)
        self.rt.mem.fetch_add32(self.hp + H.events, 1)

    def _seqnum(self):
        """/sys/kernel/uevent_seqnum, or None (no uevents watched, fake tree)."""
        if self.sock is None:
            return None
        try:
            return int(_read_sysfs(UEVENT_SEQNUM))
        except (OSError, ValueError):
            return None

    def _missed_bounces(self, seq, online):
        """CPUs online and known whose offline uevent cpuhp has not seen yet."""
        with self.events_lock:
            pending, self.offline_events = self.offline_events, []
        if seq is not None:
            for cpu in self.rt.topology.possible() - online:
                self.offline_seen[cpu] = seq        # seen offline now
        return {cpu for number, cpu in pending
                if number > self.offline_seen.get(cpu, 0) and cpu in online and
                cpu in self.known}

    def _took_offline(self, cpu):
        """After cpuhp's own offline write: its uevent is not someone else's."""
        seq = self._seqnum()
        if seq is not None:
            self.offline_seen[cpu] = seq

    def note_offline_uevent(self, number, cpu):
        """From the listener thread: an ``offline@`` uevent of ``cpu``."""
        with self.events_lock:
            self.offline_events.append((number, cpu))

    def serve(self, op, args):
        if op == OP_DOWN:
            return self.down(args)
        if op == OP_UP:
            return self.up(args)
        if op == OP_SETUP:
            return self.setup_state(*args)
        if op == OP_REMOVE:
            return self.remove_state(args)
        if op == OP_REGISTER:
            return self.smpboot.register(args, self.known)
        if op == OP_UNREGISTER:
            return self.smpboot.unregister(args)
        return 0

    # -- the loop ---------------------------------------------------------------

    def handle_request(self):
        rt, mem, hp = self.rt, self.rt.mem, self.hp
        if not mem.load32(hp + H.pending):
            return
        mem.store32(hp + H.busy, 1)
        mem.store32(hp + H.pending, 0)
        n = mem.load32(hp + H.req_len)
        raw = bytes(rt.buf[rt.arena.params.hp_req:rt.arena.params.hp_req + n])
        try:
            if b"_main__" in raw:     # __main__ or __mp_main__
                prepare_main(rt)          # callbacks from the caller's script
            op, args = pickle.loads(raw)
            reply = ("ok", self.serve(op, args))
        except (ValueError, TypeError, OSError, KthreadError) as exc:
            reply = ("raise", (type(exc), exc.args))
        except Exception as exc:
            traceback.print_exc()
            reply = ("raise", (KthreadError, (errno.EFAULT, f"cpuhp failed: {exc!r}")))
        try:
            raw = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            raw = pickle.dumps(("raise", (KthreadError, (errno.EFAULT, repr(reply)))))
        rt.buf[rt.arena.params.hp_rep:rt.arena.params.hp_rep + len(raw)] = raw
        mem.store32(hp + H.rep_len, len(raw))
        mem.store32(hp + H.busy, 0)
        rt.waits.completion_complete(hp + H.done, False)

    def start_watch(self):
        """Listen to kobject uevents in a thread that kicks the main loop."""
        if self.rt.topology.is_fake:
            return False
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 NETLINK_KOBJECT_UEVENT)
            sock.bind((0, 1))
        except (OSError, AttributeError):
            return False
        _attach_cpu_uevent_filter(sock)
        self.sock = sock
        seq = self._seqnum() or 0
        for cpu in self.rt.topology.possible():
            self.offline_seen[cpu] = seq        # older uevents are not ours to judge
        threading.Thread(target=_uevent_thread, args=(self, sock), daemon=True,
                         name="cpuhp-uevent").start()
        return True

    def loop(self):
        from .._kthread.body import kthread_should_stop
        rt, mem, hp = self.rt, self.rt.mem, self.hp
        watching = self.start_watch()
        mem.store32(hp + H.netlink, int(watching))
        mem.store32(hp + H.state, L.HP_RUNNING)
        tick = POLL_SAFETY if watching else POLL_FAKE
        retry = False
        while not kthread_should_stop():
            wait_at(rt, hp + H.req, POLL_FAKE if retry else tick, "interruptible")
            self.handle_request()
            retry = not self._sync_or_warn(retry)
        return 0

    def _sync_or_warn(self, retrying):
        """sync(), surviving its failure: cpuhp must outlive one bad pass (a sysfs
        read failing in the middle of someone else's hotplug).  It warns once per
        failing streak and is retried at the next (short) tick.  Return: success."""
        try:
            self.sync()
            return True
        except Exception:
            if not retrying:
                sys.stderr.write("kproc: cpuhp: catching up with a hotplug change failed; "
                                 "retrying:\n" + traceback.format_exc())
            return False


CPU_UEVENT_PREFIXES = (b"online@/devices/system/cpu/cpu", b"offline@/devices/system/cpu/cpu")
SO_ATTACH_FILTER = 26


def _cpu_uevent_filter():
    """Classic BPF accepting only datagrams that start with a CPU online/offline header.

    A CPU online or offline also sends the uevents of the CPU's other devices
    (cpuid here; msr, machinecheck elsewhere); without the filter each wakes
    the listener thread, and each of its GIL hand-offs cost the cpuhp thread
    1-2 ms (strace) right when it runs the startup callbacks.
    Return: the list of (code, jt, jf, k) instructions.
    """
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    insns = []
    for prefix in CPU_UEVENT_PREFIXES:
        words = [prefix[i:i + 4] for i in range(0, len(prefix) - len(prefix) % 4, 4)]
        chain_len = 2 * len(words) + 1          # (ld, jeq) per word, then accept
        for n, word in enumerate(words):
            insns.append((ld_w_abs, 0, 0, 4 * n))
            left = chain_len - (2 * n + 2)      # instructions after this jeq in the chain
            insns.append((jeq_k, 0, left, int.from_bytes(word, "big")))
        insns.append((ret_k, 0, 0, 0xFFFFFFFF))
    insns.append((ret_k, 0, 0, 0))
    return insns


def _attach_cpu_uevent_filter(sock):
    """Attach _cpu_uevent_filter() to ``sock``; without it every uevent wakes us."""
    import ctypes
    import struct
    insns = _cpu_uevent_filter()
    prog = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    fprog = struct.pack("HL", len(insns), ctypes.addressof(prog))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        pass        # unfiltered: correct, a little slower (the kernel copied prog)


def _parse_offline_uevent(msg):
    """(SEQNUM, cpu) of an ``offline@/devices/system/cpu/cpuN`` uevent, else None."""
    fields = msg.split(b"\0")
    head = fields[0]
    if not head.startswith(CPU_UEVENT_PREFIXES[1]):
        return None
    try:
        cpu = int(head[len(CPU_UEVENT_PREFIXES[1]):])
        number = next(int(f[7:]) for f in fields if f.startswith(b"SEQNUM="))
    except (ValueError, StopIteration):
        return None
    return number, cpu


def _uevent_thread(cpuhp, sock):
    """Kick cpuhp on every CPU online/offline uevent; note the offline ones."""
    rt = cpuhp.rt
    off = hp_base(rt) + H.req
    while True:
        try:
            msg = sock.recv(8192)
        except InterruptedError:
            continue
        except OSError:
            return
        if msg.startswith(CPU_UEVENT_PREFIXES):
            offline = _parse_offline_uevent(msg)
            if offline is not None:
                cpuhp.note_offline_uevent(*offline)
            rt.waits.completion_complete(off, False)


def cpuhp_thread(_data):
    """threadfn of the ``cpuhp`` kthread: serve requests and watch hotplug."""
    rt = get_runtime()
    return Cpuhp(rt).loop()
