"""Pure-Python stand-in for ``kproc._native.Mem`` (portable fallback).

Used with the posix backend when the C extension is not built.  Every
"atomic" operation takes one arena-wide lock: a ``threading.Lock`` (threads
of this process) plus an ``fcntl`` record lock on byte 0 of the arena's memfd
(other processes).  Record locks are released by the kernel when their holder
dies, so this lock survives a SIGKILL of its holder, as the robust pthread
mutex of the native path does.  Slow (two syscalls per operation) but correct.
``mutex_*`` use a record lock on the mutex's first byte in the same way.
"""

import fcntl
import os
import struct
import threading
import time

__all__ = ["PyMem"]

_U32 = struct.Struct("=I")
_I64 = struct.Struct("=q")


class PyMem:
    """Lock-based atomics over a writable buffer backed by file descriptor ``fd``."""

    MUTEX_SIZE = 8

    def __init__(self, buf, fd):
        self.buf = buf
        self.fd = fd
        self.size = len(buf)
        self._tlock = threading.Lock()
        self._mutex_tlocks = {}

    def _locked(self, fn):
        with self._tlock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0, os.SEEK_SET)
            try:
                return fn()
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0, os.SEEK_SET)

    def _check(self, off, width):
        if off < 0 or off + width > self.size or off % width:
            raise ValueError(f"offset {off} out of bounds or misaligned")

    def load32(self, off):
        self._check(off, 4)
        return _U32.unpack_from(self.buf, off)[0]

    def store32(self, off, value):
        self._check(off, 4)
        self._locked(lambda: _U32.pack_into(self.buf, off, value & 0xFFFFFFFF))

    def _rmw32(self, off, fn):
        self._check(off, 4)

        def op():
            old = _U32.unpack_from(self.buf, off)[0]
            _U32.pack_into(self.buf, off, fn(old) & 0xFFFFFFFF)
            return old
        return self._locked(op)

    def xchg32(self, off, value):
        return self._rmw32(off, lambda old: value)

    def cmpxchg32(self, off, expected, new):
        return self._rmw32(off, lambda old: new if old == expected else old)

    def fetch_add32(self, off, delta):
        return self._rmw32(off, lambda old: old + delta)

    def fetch_or32(self, off, mask):
        return self._rmw32(off, lambda old: old | mask)

    def fetch_and32(self, off, mask):
        return self._rmw32(off, lambda old: old & mask)

    def load64(self, off):
        self._check(off, 8)
        return _I64.unpack_from(self.buf, off)[0]

    def store64(self, off, value):
        self._check(off, 8)
        self._locked(lambda: _I64.pack_into(self.buf, off, value))

    def fetch_add64(self, off, delta):
        self._check(off, 8)

        def op():
            old = _I64.unpack_from(self.buf, off)[0]
            _I64.pack_into(self.buf, off, old + delta)
            return old
        return self._locked(op)

    def mutex_init(self, off):
        self._check(off, 4)

    def mutex_lock(self, off, timeout_ns=-1, spin_ns=0):
        deadline = None if timeout_ns < 0 else time.monotonic() + timeout_ns / 1e9
        tlock = self._mutex_tlocks.setdefault(off, threading.Lock())
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not tlock.acquire(timeout=wait):
            return 2
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, off, os.SEEK_SET)
                return 0
            except OSError:
                if deadline is not None and time.monotonic() >= deadline:
                    tlock.release()
                    return 2
                time.sleep(0.0002)

    def mutex_unlock(self, off):
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, off, os.SEEK_SET)
        self._mutex_tlocks[off].release()
