"""The hung-task check of a blocked control call (kernel: kernel/hung_task.c).

The kernel's khungtaskd reports a task that has slept in TASK_UNINTERRUPTIBLE
longer than ``hung_task_timeout_secs`` (default 120 s, 0 turns the check off)
with one "INFO: task ...:pid blocked for more than N seconds." per task, and
the task goes on waiting.  kproc's control calls (kthread_park, kthread_stop,
the flushes, cancel_*_sync, freeze_kthreads, the hotplug calls) are such
waits in the caller: each carries a :class:`HungTask`, which its wait loop
ticks (at least every ``TICK_NS``, so the warning comes at most one tick
late).  Past ``KPROC_HUNG_TASK_TIMEOUT_SECS`` the first tick emits ONE
:class:`KernelWarning` in the calling process, naming the call, the task it
waits for, what it waits for and since when; the wait goes on.  The warning is
a plain warning, not ``warn_on_once``: it reports the user's kthread, not a
broken invariant, so ``KPROC_STRICT`` does not turn it into an error.

Runs in whichever process makes the control call.
"""

from __future__ import annotations

import os
import time

from . import layout as L
from .blobs import read_name
from .errors import kernel_warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .runtime import Runtime  # typing only

__all__ = ["HungTask", "hung_task_timeout", "task_text", "DEFAULT_TIMEOUT_SECS", "ENV"]

ENV = "KPROC_HUNG_TASK_TIMEOUT_SECS"
DEFAULT_TIMEOUT_SECS = 120.0


def hung_task_timeout() -> float:
    """``KPROC_HUNG_TASK_TIMEOUT_SECS`` in seconds (default 120; 0: off).

    Context: any.  Return: a float >= 0.
    Raises: ValueError when the variable is not a number >= 0.
    """
    raw = os.environ.get(ENV)
    if raw is None or raw == "":
        return DEFAULT_TIMEOUT_SECS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:                 # also catches NaN
        raise ValueError(f"{ENV}={raw!r}: must be a number of seconds >= 0 (0 turns "
                         "the hung-task check off)")
    return value


def task_text(rt: Runtime, base: int) -> Callable[[], str]:
    """A lazy description of the kthread whose slot is at ``base``: ``kthread 'name' (pid N)``."""
    idx = (base - rt.arena.params.tasks) // L.TASK.size

    def text() -> str:
        try:
            pid = L.unpack_field(rt.buf, base, L.TASK, "pid")
            return f"kthread {read_name(rt.arena, idx, base)!r} (pid {pid})"
        except Exception:
            return f"kthread in task slot {idx}"
    return text


class HungTask:
    """One blocked control call, warned about once when blocked too long.

    @call: the API call (``"kthread_park"``); @what: what it waits for
    (``"to be parked"``); @task: who it waits for, or a callable giving that
    text (evaluated only when warning).  @since_ns: CLOCK_MONOTONIC start of
    the wait (default: now).
    Raises (constructor): ValueError for a bad ``KPROC_HUNG_TASK_TIMEOUT_SECS``.
    """

    __slots__ = ("call", "what", "task", "since_ns", "wall", "timeout", "warned")

    def __init__(self, call: str, what: str, task: str | Callable[[], str],
                 since_ns: int | None = None) -> None:
        self.call = call
        self.what = what
        self.task = task
        now = time.monotonic_ns()
        self.since_ns = now if since_ns is None else since_ns
        self.wall = time.time() - (now - self.since_ns) / 1e9
        self.timeout = hung_task_timeout()
        self.warned = False

    def check(self) -> bool:
        """Warn once if the call has been blocked longer than the timeout.

        Context: the blocked caller, from its wait loop; never blocks.
        Return: True if it warned now.
        """
        if self.warned or self.timeout <= 0:
            return False
        blocked = (time.monotonic_ns() - self.since_ns) / 1e9
        if blocked < self.timeout:
            return False
        self.warned = True
        task = self.task() if callable(self.task) else self.task
        import datetime     # here: only a hung task's report needs it
        since = datetime.datetime.fromtimestamp(self.wall).strftime("%H:%M:%S.%f")[:-3]
        kernel_warn(f"hung task: {self.call}() blocked for more than {self.timeout:g} s "
                    f"({ENV}): waiting for {task} {self.what}, since {since} "
                    f"({blocked:.1f} s); still waiting", stacklevel=4)
        return True
