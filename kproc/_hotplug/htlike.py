"""What the cpuhp kthread and the per-CPU loop ask of an SmpHotplugThread: the
typed view of ``struct smp_hotplug_thread`` (kernel: include/linux/smpboot.h).

``smpboot.SmpHotplugThread`` provides it.  ``hotplug_threads`` (in cpuhp) and
``smpboot_thread`` (in the per-CPU threads) cannot import that class, not
even for a type checker: ``smpboot`` sits above them (it posts registrations
through ``api``, which starts ``cpuhp``, which keeps ``hotplug_threads``), and
the import graph has no cycle, typing-only imports included.  They name
:class:`SmpHotplugThreadLike` instead, which mypy matches by structure.

Only type checkers import this module (``if TYPE_CHECKING``): nothing here
runs, and no process pays for importing ``typing``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .._sched.task import Task  # typing only: this module is imported by type checkers

__all__ = ["SmpHotplugThreadLike"]


class SmpHotplugThreadLike(Protocol):
    """The callbacks, name format and per-CPU store of a set of per-CPU threads.

    ``_reg`` = (runtime id, slot, generation) once registered, written by
    cpuhp's copy when it registers and by the caller's when the reply comes.
    """

    thread_should_run: Callable[[int], bool]
    thread_fn: Callable[[int], None]
    thread_comm: str
    create: Callable[[int], None] | None
    setup: Callable[[int], None] | None
    cleanup: Callable[[int, bool], None] | None
    park: Callable[[int], None] | None
    unpark: Callable[[int], None] | None
    selfparking: bool
    _reg: tuple[int, int, int] | None
    _key: int
    _anywhere: bool

    def task(self, cpu: int) -> Task | None: ...
