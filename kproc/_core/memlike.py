"""What every module may ask of the arena's memory: the typed view of its atomics.

Two objects provide it: ``kproc._native.Mem`` (C atomics, robust pthread
mutexes) and ``pymem.PyMem`` (the pure-Python stand-in, every operation under
one lock).  :class:`MemLike` is the part they share, so that it is the type of
``Arena.mem`` and ``Runtime.mem`` whichever backs them; what only the native
object has (futexes, C completions, the work-list fast paths) is reached
through ``kproc._native.Mem`` by the code that has made sure it is there.

Only type checkers import this module (``if TYPE_CHECKING``): nothing here
runs, and no process pays for importing ``typing``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MemLike"]


class MemLike(Protocol):
    """Sequentially consistent atomics and a robust mutex at byte offsets.

    32-bit values are unsigned (taken mod 2**32, so ``fetch_add32(off, -1)``
    decrements), 64-bit ones signed; every read-modify-write returns the old
    value.  Offsets out of bounds or misaligned raise ValueError.
    """

    @property
    def size(self) -> int: ...

    def load32(self, off: int, /) -> int: ...
    def store32(self, off: int, value: int, /) -> None: ...
    def xchg32(self, off: int, value: int, /) -> int: ...
    def cmpxchg32(self, off: int, expected: int, new: int, /) -> int: ...
    def fetch_add32(self, off: int, delta: int, /) -> int: ...
    def fetch_or32(self, off: int, mask: int, /) -> int: ...
    def fetch_and32(self, off: int, mask: int, /) -> int: ...

    def load64(self, off: int, /) -> int: ...
    def store64(self, off: int, value: int, /) -> None: ...
    def fetch_add64(self, off: int, delta: int, /) -> int: ...

    def mutex_init(self, off: int, /) -> None: ...
    # Return: 0 locked, 1 locked after its owner died (recovered), 2 timed out.
    def mutex_lock(self, off: int, /, timeout_ns: int = -1, spin_ns: int = 0) -> int: ...
    def mutex_unlock(self, off: int, /) -> None: ...
