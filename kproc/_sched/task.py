"""Task handles and task states (kernel: struct task_struct, struct kthread).

A :class:`Task` names one slot of the task table by (runtime id, index,
generation).  It is picklable, so any process of the runtime can be handed
one; every use re-checks the generation, so a handle whose slot was recycled
raises ``KthreadError(ESRCH)`` and never touches the new occupant.

A slot is recycled only when it is needed for a new kthread, its kthread is
dead and reaped, and nobody pins it with ``get_task_struct()``; until then
``kthread_stop()`` on a kthread that already exited still returns its result.
"""

from __future__ import annotations

import enum

from .._core import layout as L
from .._core.errors import KthreadError
from .._core.handle import Handle
from .._core.blobs import read_name, read_traceback
from .._core.runtime import Runtime
from .._core.syscalls import comm_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    # What a kthread runs: threadfn(data) -> its result (None counts as 0).
    ThreadFn = Callable[[Any], int | None]

__all__ = ["Task", "TaskState", "resolve", "TASK_STATES"]


class TaskState(enum.IntEnum):
    """Task states, with the kernel's values (include/linux/sched.h)."""
    TASK_RUNNING = 0x0000
    TASK_INTERRUPTIBLE = 0x0001
    TASK_UNINTERRUPTIBLE = 0x0002
    TASK_PARKED = 0x0040
    TASK_DEAD = 0x0080
    TASK_NEW = 0x0800
    TASK_FROZEN = 0x8000

    def __str__(self) -> str:
        # IntEnum prints its value since Python 3.11 ("64"); a state reads better
        # by name, as the kernel's sched_switch event prints it.
        return self.name

    def __format__(self, spec: str) -> str:
        try:
            return format(self.name, spec)
        except ValueError:                # a number's format ("{:d}", "{:#x}")
            return format(int(self), spec)


TASK_STATES = {s.value: s for s in TaskState}
TASK_NORMAL = TaskState.TASK_INTERRUPTIBLE | TaskState.TASK_UNINTERRUPTIBLE


class Task(Handle):
    """Handle on a kthread.  Attributes read live from shared memory.

    ``pid``, ``comm`` (name cut to 15 bytes), ``name`` (full name), ``cpu``,
    ``exit_signal`` (signal that killed it, 0 if none), ``exception``
    (traceback text if threadfn raised, else None), ``exit_result`` (result
    once it has exited, else None).
    """

    __slots__ = ("_base",)
    _what = "task"

    def __init__(self, rt: Runtime, idx: int, gen: int) -> None:
        self._rt = rt
        self._idx = idx
        self._gen = gen
        self._base = rt.arena.task_off(idx)

    @classmethod
    def _attach(cls, rt: Runtime, idx: int, gen: int) -> Task:
        return cls(rt, idx, gen)

    def _check(self) -> int:
        return self._rt.arena.check_task(self._idx, self._gen)

    def _field(self, name: str) -> int:
        base = self._check()
        return L.unpack_field(self._rt.buf, base, L.TASK, name)

    @property
    def pid(self) -> int:
        return self._field("pid")

    @property
    def name(self) -> str:
        self._check()
        return read_name(self._rt.arena, self._idx, self._base)

    @property
    def comm(self) -> str:
        return comm_of(self.name)

    @property
    def cpu(self) -> int:
        """The CPU it is bound to as per-CPU / on-CPU kthread, or -1."""
        return self._field("cpu")

    @property
    def exit_signal(self) -> int:
        return self._field("signal")

    @property
    def exception(self) -> str | None:
        base = self._check()
        if L.unpack_field(self._rt.buf, base, L.TASK, "exit_kind") != L.EXIT_EXCEPTION:
            return None
        return read_traceback(self._rt.arena, self._idx, base)

    @property
    def exit_result(self) -> int | None:
        base = self._check()
        if self._rt.mem.load32(base + L.TASK.slot) not in (L.SLOT_EXITING, L.SLOT_DEAD):
            return None
        return self._rt.mem.load64(base + L.TASK.result)

    def __repr__(self) -> str:
        try:
            state = TASK_STATES.get(self._field("state"), "?")
            return f"<Task {self.name!r} pid={self.pid} {getattr(state, 'name', state)}>"
        except KthreadError:
            return f"<Task slot={self._idx} gen={self._gen} (stale)>"


def resolve(task: object, what: str = "task") -> tuple[Runtime, int]:
    """Check a Task argument; return (runtime, slot offset).

    Raises: TypeError if not a Task; KthreadError(ESRCH) if stale or of a
    runtime that is gone.
    """
    if not isinstance(task, Task):
        raise TypeError(f"{what} must be a kproc.Task, not {type(task).__name__}")
    return task._live_runtime(), task._check()
