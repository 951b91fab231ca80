"""Hotplug states and their callbacks (kernel: kernel/cpu.c, ``cpuhp_hp_states``,
``cpuhp_invoke_callback``, ``cpuhp_rollback_install``, ``__cpuhp_setup_state``,
``__cpuhp_remove_state``).

The states, in order: the built-in ones cpuhp passes in (per-CPU threads,
then affinities), then the dynamic ones of ``cpuhp_setup_state`` in
registration order, numbered from ``DYN_BASE`` as the kernel numbers its
``CPUHP_AP_ONLINE_DYN`` range.  Teardowns run in reverse state order,
startups in order; a callback failing half way rolls back the ones already
run for that CPU, newest first, so a CPU is never left half set up.

A callback returns 0 or a negative errno (None counts as 0); one that raises
is reported on stderr with its traceback and counts as ``-EFAULT``, one that
returns something else as ``-EINVAL``, so a faulty callback can neither end
cpuhp nor be mistaken for success.
Context: the callbacks were checked in the caller (``_core.funcref.check_callback``);
everything else in the cpuhp kthread, which alone owns the states.
"""

from __future__ import annotations

import errno
import sys
import traceback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    # A state's startup or teardown: f(cpu) -> 0 or a negative errno.
    StateCallback = Callable[[int], int]
    # One step of run_with_rollback(): what to run, and what undoes it.
    Step = tuple[StateCallback | None, StateCallback | None]

__all__ = ["CALLBACK_EXCEPTION", "MAX_DYN_STATES", "DYN_BASE", "HotplugState", "States",
           "invoke", "run_with_rollback"]

MAX_DYN_STATES = 40        # as the kernel's CPUHP_AP_ONLINE_DYN range
DYN_BASE = 1000            # first dynamic state number returned
CALLBACK_EXCEPTION = -errno.EFAULT


def invoke(fn: Callable[..., object] | None, cpu: int, *args: object) -> int:
    """cpuhp_invoke_callback(): run ``fn(cpu, *args)`` if there is one.

    Context: the cpuhp kthread (and smpboot's ``create``).
    Return: 0 for no callback or None; the callback's int; -EFAULT if it
    raised (traceback on stderr); -EINVAL for any other value.
    """
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


def run_with_rollback(cpu: int, steps: Iterable[Step]) -> int:
    """Run each ``(do, undo)`` of ``steps`` for ``cpu`` until one fails; then the
    undos of those done, newest first (cpuhp_rollback_install's order).

    Return: 0, or the failing callback's negative errno.
    """
    done: list[StateCallback | None] = []
    for do, undo in steps:
        rc = invoke(do, cpu)
        if rc < 0:
            for back in reversed(done):
                invoke(back, cpu)
            return rc
        done.append(undo)
    return 0


class HotplugState:
    """One entry of cpuhp_hp_states: its number, name and two callbacks."""

    __slots__ = ("number", "name", "startup", "teardown")

    def __init__(self, number: int, name: str, startup: StateCallback | None,
                 teardown: StateCallback | None) -> None:
        self.number, self.name, self.startup, self.teardown = number, name, startup, teardown


class States:
    """The registered states, built-in first, as the cpuhp kthread keeps them."""

    def __init__(self, builtin: Iterable[HotplugState]) -> None:
        self.builtin = list(builtin)
        self.dyn: list[HotplugState] = []
        self.next_number = DYN_BASE

    def all(self) -> list[HotplugState]:
        """Every state, in startup order."""
        return self.builtin + self.dyn

    def run_teardowns(self, cpu: int) -> int:
        """Teardowns in reverse; on failure, startups of those done.  Return: rc."""
        return run_with_rollback(cpu, [(st.teardown, st.startup) for st in reversed(self.all())])

    def run_startups(self, cpu: int) -> int:
        """Startups in order; on failure, teardowns of those done.  Return: rc."""
        return run_with_rollback(cpu, [(st.startup, st.teardown) for st in self.all()])

    def add(self, name: str, startup: StateCallback | None, teardown: StateCallback | None,
            cpus: Iterable[int]) -> int:
        """__cpuhp_setup_state(): run ``startup`` on ``cpus`` in CPU order, then add
        the state; if it fails on one, ``teardown`` on those done (newest first).

        Return: the new state's number; -ENOSPC when MAX_DYN_STATES exist; the
        failing startup's negative errno.
        """
        if len(self.dyn) >= MAX_DYN_STATES:
            return -errno.ENOSPC
        done: list[int] = []
        for cpu in sorted(cpus):
            rc = invoke(startup, cpu)
            if rc < 0:
                for back in reversed(done):
                    invoke(teardown, back)
                return rc
            done.append(cpu)
        st = HotplugState(self.next_number, name, startup, teardown)
        self.next_number += 1
        self.dyn.append(st)
        return st.number

    def remove(self, number: int, cpus: Iterable[int]) -> None:
        """__cpuhp_remove_state(): run the state's teardown on ``cpus`` (reverse CPU
        order) and remove it.  Raises: ValueError (no such dynamic state)."""
        st = next((s for s in self.dyn if s.number == number), None)
        if st is None:
            raise ValueError(f"no hotplug state {number} (states are the numbers "
                             "cpuhp_setup_state() returned)")
        for cpu in sorted(cpus, reverse=True):
            invoke(st.teardown, cpu)
        self.dyn.remove(st)
