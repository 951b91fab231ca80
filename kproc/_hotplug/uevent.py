"""The cpuhp kthread's ear for CPU changes made by someone else: a
``NETLINK_KOBJECT_UEVENT`` listener (kernel: lib/kobject_uevent.c, the
``online@`` / ``offline@`` uevents that drivers/base/core.c sends for
``/devices/system/cpu/cpuN`` when kernel/cpu.c brings a CPU up or down).

A thread of the cpuhp kthread's process reads the socket and kicks cpuhp's
main loop on every CPU online/offline uevent; a classic BPF filter drops
the other uevents in the kernel (see ``cpu_uevent_filter``).  There is no
uevent on a fake tree, nor without netlink: cpuhp then polls (``start()``
says which).

Each CPU uevent is noted as (SEQNUM, online?, cpu): the kernel sends it
once the change is complete (drivers/base/core.c ``device_online`` /
``device_offline`` send KOBJ_ONLINE / KOBJ_OFFLINE after the bus callback,
i.e. after kernel/cpu.c's ``cpu_up``/``cpu_down`` returned), so it says
what happened and when the kernel had settled.  cpuhp replays the notes in
SEQNUM order: a CPU taken down and brought back between two looks is two
notes, so it is never missed and never counted twice.  cpuhp's own writes
make uevents too: ``own_write`` marks, per CPU, the uevent_seqnum read just
after the write returned (the uevent was sent before that), and notes up to
that mark are not someone else's.  A receive overrun (ENOBUFS: notes were
lost) is remembered in ``lost``, for cpuhp to fall back on the online mask.
The notes are handed from the listener thread to cpuhp under a lock.
Context: the cpuhp kthread (its main thread and its listener thread).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading

from .._core.topology import _read as _read_sysfs
from .record import kick_cpuhp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core.runtime import Runtime  # typing only

__all__ = ["UeventWatch", "cpu_uevent_filter", "attach_cpu_uevent_filter",
           "parse_cpu_uevent"]

NETLINK_KOBJECT_UEVENT = 15
UEVENT_SEQNUM = "/sys/kernel/uevent_seqnum"
CPU_UEVENT_PREFIXES = (b"online@/devices/system/cpu/cpu", b"offline@/devices/system/cpu/cpu")
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
RCVBUF = 4 << 20


class UeventWatch:
    """The uevent listener and the CPU uevents it has noted for cpuhp."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        # (SEQNUM, online, cpu) not looked at yet, from the thread
        self._events: list[tuple[int, bool, int]] = []
        # cpu -> uevent_seqnum right after cpuhp's own last write for it
        self._own: dict[int, int] = {}
        self.lost = False

    def start(self) -> bool:
        """Open the socket and start the listener thread.

        Return: True if uevents are watched; False on a fake tree or where
        netlink is unavailable (cpuhp then polls on a short tick).
        """
        if self.rt.topology.is_fake:
            return False
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 NETLINK_KOBJECT_UEVENT)
            try:        # root: past rmem_max, so a burst of changes never overruns it
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, 1))
        except (OSError, AttributeError):
            return False
        attach_cpu_uevent_filter(sock)
        self.sock = sock
        seq = self.seqnum() or 0
        for cpu in self.rt.topology.possible():
            self._own[cpu] = seq          # uevents before start() are not ours to judge
        threading.Thread(target=self._listen, args=(sock,), daemon=True,
                         name="cpuhp-uevent").start()
        return True

    def seqnum(self) -> int | None:
        """/sys/kernel/uevent_seqnum, or None (no uevents watched, fake tree)."""
        if self.sock is None:
            return None
        try:
            return int(_read_sysfs(UEVENT_SEQNUM))
        except (OSError, ValueError):
            return None

    def take(self) -> list[tuple[int, bool, int]]:
        """The notes not looked at yet, oldest first, less cpuhp's own writes'.
        Consumes them."""
        with self._lock:
            pending, self._events = self._events, []
        pending.sort()
        return [ev for ev in pending if ev[0] > self._own.get(ev[2], 0)]

    def put_back(self, notes: list[tuple[int, bool, int]]) -> None:
        """Notes taken but not replayed (a replay failed half way): taken again
        next time, in SEQNUM order with the newer ones."""
        if notes:
            with self._lock:
                self._events[:0] = notes

    def own_write(self, cpu: int) -> None:
        """After cpuhp's own write to ``cpu``'s online file (or after it caught up
        with the CPU from the online mask): uevents so far are not news."""
        seq = self.seqnum()
        if seq is not None:
            self._own[cpu] = seq

    def _listen(self, sock: socket.socket) -> None:
        """The listener thread: note every CPU uevent from ``sock``, kick cpuhp."""
        _stay_off_new_cpus()
        while True:
            try:
                msg = sock.recv(8192)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost = True
                    kick_cpuhp(self.rt)
                    continue
                return
            # everything queued already, in one go: each GIL hand-off of this thread
            # waits up to a switch interval while cpuhp runs callbacks
            msgs = [msg]
            while True:
                try:
                    msgs.append(sock.recv(8192, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self.lost = True
                    break
            notes = [n for n in map(parse_cpu_uevent, msgs) if n is not None]
            if notes:
                with self._lock:
                    self._events.extend(notes)
                kick_cpuhp(self.rt)


def _stay_off_new_cpus() -> None:
    """Bind the calling (listener) thread to the first CPU cpuhp may use.

    The uevent of cpuhp's own online write wakes this thread right after the
    CPU came up; woken there it preempted cpuhp/N in the middle of the AP
    startups (5-6 ms of the new CPU per cpu_up, measured with ftrace) and
    traded the GIL with cpuhp's main thread.  A CPU that goes away breaks
    the binding (the kernel moves the thread, and restores it when the CPU
    is back): the listener never stops hearing.
    """
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed) > 1:
            os.sched_setaffinity(0, {min(allowed)})     # pid 0: this thread only
    except OSError:
        pass


def cpu_uevent_filter() -> list[tuple[int, int, int, int]]:
    """Classic BPF accepting only datagrams that start with a CPU online/offline header.

    A CPU online or offline also sends the uevents of the CPU's other devices
    (cpuid here; msr, machinecheck elsewhere); without the filter each wakes
    the listener thread, and each of its GIL hand-offs cost the cpuhp thread
    1-2 ms (strace) right when it runs the startup callbacks.
    Return: the list of (code, jt, jf, k) instructions.
    """
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    insns: list[tuple[int, int, int, int]] = []
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


def attach_cpu_uevent_filter(sock: socket.socket) -> None:
    """Attach cpu_uevent_filter() to ``sock``; without it every uevent wakes us."""
    insns = cpu_uevent_filter()
    prog = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    fprog = struct.pack("HL", len(insns), ctypes.addressof(prog))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        pass        # unfiltered: correct, a little slower (the kernel copied prog)


def parse_cpu_uevent(msg: bytes) -> tuple[int, bool, int] | None:
    """(SEQNUM, online?, cpu) of an ``online@`` or ``offline@/devices/system/cpu/cpuN``
    uevent, else None."""
    fields = msg.split(b"\0")
    head = fields[0]
    for online, prefix in ((True, CPU_UEVENT_PREFIXES[0]), (False, CPU_UEVENT_PREFIXES[1])):
        if head.startswith(prefix):
            break
    else:
        return None
    try:
        cpu = int(head[len(prefix):])
        number = next(int(f[7:]) for f in fields if f.startswith(b"SEQNUM="))
    except (ValueError, StopIteration):
        return None
    return number, online, cpu
