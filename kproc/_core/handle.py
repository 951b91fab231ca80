"""The base of every handle on an arena slot: Task, Completion, works, workers.

A handle names one slot by (runtime, index, generation).  What every handle
does the same way lives here, once:

* pickling by (runtime id, index, generation), restored only in a process of
  the same runtime (anything else raises ``pickle.UnpicklingError``);
* equality and hashing by (kind, runtime, index, generation), so two handles
  on the same occupant of a slot are equal, and a handle on a recycled slot's
  new occupant is not;
* the "runtime was shut down" error.

Each subclass says how to rebuild a handle in another process
(:meth:`Handle._attach`) and checks its own generation word on every use,
since each table keeps it in its own record.  Runs in every process.
"""

from __future__ import annotations

import errno
import pickle

from .errors import KthreadError
from .runtime import Runtime, current_runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

__all__ = ["Handle"]


class Handle:
    """A (runtime, slot index, generation) triple with identity semantics."""

    __slots__ = ("_rt", "_idx", "_gen")
    _what = "handle"            # how errors name it: "task", "work", ...
    _rt: Runtime
    _idx: int
    _gen: int

    @classmethod
    def _attach(cls, rt: Runtime, idx: int, gen: int) -> Self:
        """Make a handle on slot ``idx`` of generation ``gen`` of ``rt`` (not owning it)."""
        raise NotImplementedError

    def _live_runtime(self) -> Runtime:
        """This handle's runtime.  Raises: KthreadError(ESRCH) once it was shut down."""
        rt = self._rt
        if rt.closed:
            if rt.role.value == "forked":
                raise KthreadError(errno.ESRCH, f"the {self._what} belongs to the kproc "
                                   "runtime of the parent process (a forked child inherits "
                                   "no runtime: start its own)")
            raise KthreadError(errno.ESRCH, f"the {self._what}'s kproc runtime was shut down")
        return rt

    def __reduce__(self) -> tuple[Callable[[type[Handle], int, int, int], Handle],
                                  tuple[type[Handle], int, int, int]]:
        return (_restore_handle, (type(self), self._rt.runtime_id, self._idx, self._gen))

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other._rt is self._rt
                and other._idx == self._idx and other._gen == self._gen)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._rt.runtime_id, self._idx, self._gen))


def _restore_handle(cls: type[Handle], runtime_id: int, idx: int, gen: int) -> Handle:
    rt = current_runtime()
    if rt is None or rt.runtime_id != runtime_id:
        raise pickle.UnpicklingError(f"a kproc.{cls.__name__} can only be unpickled in a "
                                     "process of the runtime that created it")
    return cls._attach(rt, idx, gen)
