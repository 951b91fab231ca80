"""The pool's shared memory: call slots in one memfd, large payloads in memfds of their own.

A pool's caller and its workers exchange calls and outcomes through one
anonymous ``memfd`` (mode 0600) that the pool's creator owns: a header and
``nslots`` fixed-size slots, each holding one call's state word, the encoded
call (written by the caller) and then its outcome (written by the worker), in
the same inline area.  A worker maps it through ``/proc/<creator>/fd/<n>``
(which needs ptrace rights over the creator, as ``kproc ps`` does for the
arena) and checks the inode it reached, so a reused descriptor number is
never mistaken for the pool.

A payload larger than the inline area travels in a memfd of its own (the
*side channel*): the writer creates it, fills it and publishes (pid, fd,
inode, length) in the slot; the reader opens it through ``/proc`` and reads
it; the writer closes its descriptor once the reader cannot need it any more.
Nothing has a name anywhere, so no fault -- SIGKILL of either side
included -- can leave anything in ``/dev/shm``: the memory goes with the last
descriptor or mapping.

A slot also holds its *ticket* (``SLOT.ticket``): the caller fills a
worker's slots in ring order and numbers the calls it places on that
worker 1, 2, 3...; a worker's drain work (``remote.run_drain``) runs its
map calls in ticket order (see ``remote``).

Slot states (``SLOT.state``): FREE -> QUEUED (caller, before queueing the
work) -> RUNNING (worker, compare-and-swap, just before the call) -> DONE
(worker, once the outcome is whole); QUEUED -> CANCELLED (caller,
compare-and-swap: the call will never start) -> FREE.  Exactly one of the two
compare-and-swaps on a QUEUED slot wins, which is what makes a cancel
succeed exactly until the call starts.

Where the C extension is built, the hot slot operations run whole in C
(``native/pool.c``: place, reap, and a worker's claim-run-publish; see
``PoolMemory.cmem``), on this layout, which ``pool_layout()`` lets this
module check at import; everything else, and everything with
``KPROC_NATIVE=0``, goes through the Python code here and in ``remote``.

Runs in the caller (create, write calls, read outcomes) and in the pool's
worker kthreads (attach, read calls, write outcomes).
"""

from __future__ import annotations

import mmap
import os
import struct

from .._core.layout import Record
from .._core.native import load_mem_class, native
from .._core.pymem import PyMem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from .._core.memlike import MemLike  # typing only
    from .._native import Mem  # typing only: the extension may be missing

__all__ = ["PoolMemory", "HEADER", "DRAIN", "SLOT", "SLOT_BODY", "SLOT_SIZE", "FREE", "QUEUED",
           "RUNNING", "DONE", "CANCELLED", "INLINE_MAX", "put_big", "take_big", "close_fd"]

# caller_cpu: the CPU the caller last placed a call from, + 1 (0: not known); a drain
# on that CPU does not spin for the next ticket (it would only delay the caller)
HEADER = Record("POOL_HEADER", [("magic", "Q"), ("nslots", "I"), ("slot_size", "I"),
                                ("broken", "I"), ("want", "I"), ("nworkers", "I"),
                                ("caller_cpu", "I")], stride=64)
# one per worker, after the header: active is 1 while its drain work (remote.run_drain)
# is queued or running; next_ticket: the ticket it runs next; cur: the slot of the call
# it ran last (both written by the worker only)
DRAIN = Record("POOL_DRAIN", [("active", "I"), ("cur", "I"), ("next_ticket", "Q")], stride=64)
# outcome: what the inline area (or the big payload) holds once DONE.
SLOT = Record("POOL_SLOT", [("state", "I"), ("direct", "I"), ("kind", "I"), ("outcome", "I"),
                            ("length", "Q"), ("big_pid", "I"), ("big_fd", "I"),
                            ("big_ino", "Q"), ("use_seq", "Q"), ("ticket", "Q")], stride=64)
# kind, outcome, length, big_pid, big_fd, big_ino: written and read as one block
# (the slot is FREE or DONE meanwhile: its state word orders it).
SLOT_BODY = struct.Struct("=IIQIIQ")
if (SLOT.kind, SLOT.outcome, SLOT.length, SLOT.big_pid, SLOT.big_fd, SLOT.big_ino) != \
        (8, 12, 16, 24, 28, 32):
    raise ImportError("POOL_SLOT's body is not laid out as SLOT_BODY reads it")
MAGIC = 0x4B504F4F4C303032          # "KPOOL002"
SLOT_SIZE = 8192
INLINE_MAX = SLOT_SIZE - SLOT.stride


def _check_native_layout() -> None:
    """The C slot operations (native/pool.c) assume this layout: refuse a mismatch."""
    layout = getattr(native, "pool_layout", None)
    if layout is None:
        return
    ours = {"SLOT_SIZE": SLOT_SIZE, "SLOT.stride": SLOT.stride, "HEADER.broken": HEADER.broken,
            "HEADER.caller_cpu": HEADER.caller_cpu, "DRAIN.cur": DRAIN.cur,
            "DRAIN.next_ticket": DRAIN.next_ticket}
    ours.update({f"SLOT.{f}": getattr(SLOT, f) for f in
                 ("state", "direct", "kind", "outcome", "length", "big_pid", "big_fd",
                  "big_ino", "use_seq", "ticket")})
    if layout() != ours:
        raise ImportError("kproc._native's pool layout differs from kproc/_pool/channel.py's "
                          "(a stale build: rebuild the extension)")


_check_native_layout()

FREE, QUEUED, RUNNING, DONE, CANCELLED = 0, 1, 2, 3, 4


def _slot_ops(mem: MemLike) -> Mem | None:
    """``mem`` itself where it has native/pool.c's slot operations (the native Mem)."""
    # (no typing.cast: this module is preloaded in kthreadd, and typing is 0.5 MB)
    return mem if hasattr(mem, "pool_place") else None  # type: ignore[return-value]


def _spin_word(mem: MemLike) -> Callable[[int, int], int] | None:
    """The native Mem's ``pool_spin_done(off, spin_ns)``: a direct waiter spins on its
    slot's state word with it (``direct``), or None."""
    return mem.pool_spin_done if hasattr(mem, "pool_spin_done") else None


def _make_mem(buf: mmap.mmap, fd: int) -> MemLike:
    native = load_mem_class()
    if native is not None:
        return native(buf)
    return PyMem(buf, fd)


class PoolMemory:
    """One pool's slot memory, as mapped by this process.

    ``key`` (creator pid, fd, device, inode, size) names it for the workers.
    """

    def __init__(self, fd: int, buf: mmap.mmap, key: tuple[int, int, int, int, int],
                 owner: bool) -> None:
        self.fd, self.buf, self.key, self.owner = fd, buf, key, owner
        self.mem = _make_mem(buf, fd)
        self.cmem = _slot_ops(self.mem)
        self.fast = self.cmem is not None
        self.spin_word = _spin_word(self.mem)
        self.view = memoryview(buf)
        self.nslots = self.mem.load32(HEADER.nslots)
        self.slots_base = HEADER.stride + self.mem.load32(HEADER.nworkers) * DRAIN.stride

    @classmethod
    def create(cls, nslots: int, nworkers: int) -> PoolMemory:
        """Create the memfd (caller side).  Raises: OSError."""
        base = HEADER.stride + nworkers * DRAIN.stride
        size = base + nslots * SLOT_SIZE
        fd = os.memfd_create("kproc-pool", os.MFD_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        st = os.fstat(fd)
        pm = cls.__new__(cls)
        pm.fd, pm.buf, pm.owner = fd, buf, True
        pm.key = (os.getpid(), fd, st.st_dev, st.st_ino, size)
        pm.mem = _make_mem(buf, fd)
        pm.cmem = _slot_ops(pm.mem)
        pm.fast = pm.cmem is not None
        pm.spin_word = _spin_word(pm.mem)
        pm.view = memoryview(buf)
        pm.mem.store32(HEADER.nslots, nslots)
        pm.mem.store32(HEADER.slot_size, SLOT_SIZE)
        pm.mem.store32(HEADER.nworkers, nworkers)
        for w in range(nworkers):
            pm.mem.store64(cls.drain_off(w) + DRAIN.next_ticket, 1)     # tickets start at 1
        pm.mem.store64(HEADER.magic, MAGIC)
        pm.nslots, pm.slots_base = nslots, base
        return pm

    @classmethod
    def attach(cls, key: tuple[int, int, int, int, int]) -> PoolMemory:
        """Map the pool named by ``key`` (worker side).

        Raises: OSError (creator gone, or ENXIO if the descriptor is no longer the pool).
        """
        pid, fdnum, dev, ino, size = key
        fd = os.open(f"/proc/{pid}/fd/{fdnum}", os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (dev, ino) or st.st_size != size:
                raise OSError(6, "the pool's memory is gone (its descriptor was reused)")
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, buf, key, False)

    def slot_off(self, slot: int) -> int:
        """Byte offset of slot ``slot``'s record; its inline area follows it."""
        return self.slots_base + slot * SLOT_SIZE

    @staticmethod
    def drain_off(w: int) -> int:
        """Byte offset of worker ``w``'s DRAIN record."""
        return HEADER.stride + w * DRAIN.stride

    def write_body(self, off: int, kind: int, outcome: int, length: int,
                   big: tuple[int, int, int] | None) -> None:
        """Write a slot's body (not its state word): what it holds and where."""
        if big is None:
            SLOT_BODY.pack_into(self.buf, off + SLOT.kind, kind, outcome, length, 0, 0, 0)
        else:
            SLOT_BODY.pack_into(self.buf, off + SLOT.kind, kind, outcome, length, big[0],
                                big[1], big[2])

    def write_call(self, off: int, kind: int, data: bytes) -> None:
        """Write an inline call (body and bytes; not the state word)."""
        start = off + SLOT.stride
        self.view[start:start + len(data)] = data
        SLOT_BODY.pack_into(self.buf, off + SLOT.kind, kind, 0, len(data), 0, 0, 0)

    def read_outcome(self, off: int) -> tuple[int, bytes, tuple[int, int, int, int] | None]:
        """(outcome code, inline bytes, None) of a DONE slot, or (code, b"", (pid, fd,
        inode, length)) when the outcome is in the side channel."""
        _kind, code, n, pid, fd, ino = SLOT_BODY.unpack_from(self.buf, off + SLOT.kind)
        if pid:
            return code, b"", (pid, fd, ino, n)
        start = off + SLOT.stride
        return code, self.buf[start:start + n], None

    def read_body(self, off: int) -> tuple[int, int, int, int, int, int]:
        """(kind, outcome, length, big_pid, big_fd, big_ino) of a slot."""
        return SLOT_BODY.unpack_from(self.buf, off + SLOT.kind)

    def write_inline(self, off: int, data: bytes) -> None:
        start = off + SLOT.stride
        self.view[start:start + len(data)] = data

    def read_inline(self, off: int, n: int) -> bytes:
        start = off + SLOT.stride
        return bytes(self.view[start:start + n])

    def close(self) -> None:
        """Unmap and close (the memory lives on while a worker maps it)."""
        self.view.release()
        del self.mem
        try:
            self.buf.close()
        except BufferError:
            pass        # a Mem export is still alive; the mapping goes with the process
        os.close(self.fd)


def put_big(data: bytes) -> tuple[int, int, int]:
    """Write ``data`` into a fresh memfd of this process.

    Return: (fd, inode, length); the caller publishes them with its pid and
    closes ``fd`` with :func:`close_fd` once the reader is done with it.
    Raises: OSError (out of memory: ENOSPC/ENOMEM).
    """
    fd = os.memfd_create("kproc-pool-payload", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.write(fd, view[done:])
        return fd, os.fstat(fd).st_ino, len(data)
    except BaseException:
        os.close(fd)
        raise


def take_big(pid: int, fdnum: int, ino: int, length: int) -> bytes:
    """Read a payload another process of the runtime published with put_big().

    Raises: OSError (ENOENT once the writer has died or closed it; ENXIO if
    the descriptor number now names something else).
    """
    fd = os.open(f"/proc/{pid}/fd/{fdnum}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != ino:
            raise OSError(6, "the payload's descriptor was reused")
        out = bytearray(length)
        view, done = memoryview(out), 0
        while done < length:
            n = os.preadv(fd, [view[done:]], done)
            if n <= 0:
                raise OSError(5, "short payload")
            done += n
        return bytes(out)
    finally:
        os.close(fd)


def close_fd(fd: int) -> None:
    """Close a side-channel descriptor, ignoring one already gone."""
    try:
        os.close(fd)
    except OSError:
        pass
