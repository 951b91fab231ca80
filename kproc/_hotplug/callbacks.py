"""Hotplug states and their callbacks (kernel: include/linux/cpuhotplug.h's
``enum cpuhp_state``; kernel/cpu.c, ``cpuhp_invoke_callback``,
``cpuhp_reserve_state``, ``cpuhp_store_callbacks``).

The state numbers are kproc's own, in cpuhotplug.h's order with only the
states kproc has (documented in docs/design.md, "CPU hotplug"):

* the BP (control side) states: ``CPUHP_CREATE_THREADS`` (the missing
  per-CPU threads created, parked) and the dynamic ``CPUHP_BP_PREPARE_DYN``
  range, run by the control cpuhp kthread before the CPU is brought up
  (startup) and after it is dead (teardown); ``CPUHP_BRINGUP_CPU`` and
  ``CPUHP_TEARDOWN_CPU`` are the sysfs writes;
* the AP states, run on the CPU itself by its ``cpuhp/N`` thread once it is
  online (startup) and while it still is (teardown):
  ``CPUHP_AP_SMPBOOT_THREADS`` (per-CPU threads unparked / parked),
  ``CPUHP_AP_KTHREADS_ONLINE`` (kthreads_online_cpu) and the dynamic
  ``CPUHP_AP_ONLINE_DYN`` range.

Startups run in ascending state order, teardowns descending; a failure half
way rolls back the states already run for that CPU, newest first.

A callback returns 0 or a negative errno (None counts as 0); one that raises
is reported on stderr with its traceback and counts as ``-EFAULT``, one that
returns something else as ``-EINVAL``, so a faulty callback can neither end
cpuhp nor be mistaken for success.  A hotplug call made while a callback
runs (``in_callback``) would wait for itself: ``api`` answers it -EDEADLK.
Context: the control cpuhp kthread and the cpuhp/N threads (``run_steps``);
the state table is the control side's alone.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import traceback

from .._core import trace as _trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    # A state's startup or teardown: f(cpu) -> 0 or a negative errno.
    StateCallback = Callable[[int], int]
    # One step of run_steps(): state number, name, what to run, what undoes it.
    Step = tuple[int, str, StateCallback | None, StateCallback | None]

__all__ = ["CALLBACK_EXCEPTION", "CPUHP_OFFLINE", "CPUHP_CREATE_THREADS",
           "CPUHP_BP_PREPARE_DYN", "CPUHP_BP_PREPARE_DYN_END", "CPUHP_BRINGUP_CPU",
           "CPUHP_TEARDOWN_CPU", "CPUHP_AP_ONLINE_IDLE", "CPUHP_AP_SMPBOOT_THREADS",
           "CPUHP_AP_KTHREADS_ONLINE", "CPUHP_AP_ONLINE_DYN", "CPUHP_AP_ONLINE_DYN_END",
           "CPUHP_ONLINE", "HotplugState", "States", "invoke", "run_steps", "is_ap_state",
           "in_callback", "mark_hotplug_process", "enter", "leave"]

CPUHP_OFFLINE = 0
CPUHP_CREATE_THREADS = 1
CPUHP_BP_PREPARE_DYN = 2
CPUHP_BP_PREPARE_DYN_END = CPUHP_BP_PREPARE_DYN + 20
CPUHP_BRINGUP_CPU = 23
CPUHP_TEARDOWN_CPU = 24
CPUHP_AP_ONLINE_IDLE = 25
CPUHP_AP_SMPBOOT_THREADS = 26
CPUHP_AP_KTHREADS_ONLINE = 27
CPUHP_AP_ONLINE_DYN = 28
CPUHP_AP_ONLINE_DYN_END = CPUHP_AP_ONLINE_DYN + 40
CPUHP_ONLINE = 69

CALLBACK_EXCEPTION = -errno.EFAULT

# Set in the processes that run hotplug callbacks for cpuhp (the control
# kthread, cpuhp/N): any hotplug call made there comes from a callback.
_hotplug_process = False
# Callbacks running in this thread (smpboot's park/unpark/setup/cleanup too).
_local = threading.local()


def mark_hotplug_process() -> None:
    """This process runs hotplug callbacks (cpuhp, cpuhp/N).  Context: those."""
    global _hotplug_process
    _hotplug_process = True


def enter() -> None:
    """A hotplug callback starts running in this thread."""
    _local.depth = getattr(_local, "depth", 0) + 1


def leave() -> None:
    """The callback enter() announced has returned."""
    _local.depth -= 1


def in_callback() -> bool:
    """True if a hotplug callback is running in this thread (or this is a cpuhp
    process).  Context: any."""
    return _hotplug_process or getattr(_local, "depth", 0) > 0


def is_ap_state(number: int) -> bool:
    """True for a state run on the hotplugged CPU (after CPUHP_TEARDOWN_CPU)."""
    return number > CPUHP_TEARDOWN_CPU


def invoke(fn: Callable[..., object] | None, cpu: int, *args: object) -> int:
    """cpuhp_invoke_callback(): run ``fn(cpu, *args)`` if there is one.

    Context: the cpuhp kthreads and the per-CPU threads (smpboot's callbacks).
    Return: 0 for no callback or None; the callback's int; -EFAULT if it
    raised (traceback on stderr); -EINVAL for any other value.
    """
    if fn is None:
        return 0
    enter()
    try:
        ret = fn(cpu, *args)
    except Exception:
        sys.stderr.write(f"kproc: cpuhp: callback {getattr(fn, '__qualname__', fn)!r} "
                         f"for CPU {cpu} raised:\n{traceback.format_exc()}")
        sys.stderr.flush()
        return CALLBACK_EXCEPTION
    finally:
        leave()
    if ret is None:
        return 0
    return ret if isinstance(ret, int) and not isinstance(ret, bool) else -errno.EINVAL


def _traced(number: int, name: str, fn: StateCallback | None, cpu: int, up: bool,
            after_the_fact: bool, on_cpu: int) -> int:
    rc = invoke(fn, cpu)
    if _trace.ENABLED and fn is not None:
        # kthread_cpuhp_startup / kthread_cpuhp_teardown on this process's track
        _trace.lifecycle("cpuhp_startup" if up else "cpuhp_teardown", os.getpid(), "",
                         state=number, name=name, cpu=cpu, rc=rc, on_cpu=on_cpu,
                         after_the_fact=after_the_fact)
    return rc


def run_steps(cpu: int, steps: Sequence[Step], up: bool, rollback: bool = True,
              after_the_fact: bool = False, on_cpu: int = -1) -> int:
    """Run each step's callback for ``cpu`` in the order given; if one fails and
    ``rollback``, the undos of those done, newest first (cpu.c's rollback).
    Without ``rollback`` (a change made by someone else: there is no state to
    go back to) every step runs and the first failure is returned.

    @up: startups (True) or teardowns, for the trace event.  @after_the_fact,
    @on_cpu: recorded in the trace event (the CPU was changed by someone
    else; the CPU the callback ran on).
    Return: 0, or the (first) failing callback's negative errno.
    """
    done: list[Step] = []
    first = 0
    for step in steps:
        number, name, do, _undo = step
        rc = _traced(number, name, do, cpu, up, after_the_fact, on_cpu)
        if rc < 0:
            if rollback:
                for bnum, bname, _bdo, back in reversed(done):
                    _traced(bnum, bname, back, cpu, not up, after_the_fact, on_cpu)
                return rc
            first = first or rc
        done.append(step)
    return first


class HotplugState:
    """One entry of cpuhp_hp_states: its number, name and two callbacks."""

    __slots__ = ("number", "name", "startup", "teardown")

    def __init__(self, number: int, name: str, startup: StateCallback | None,
                 teardown: StateCallback | None) -> None:
        self.number, self.name, self.startup, self.teardown = number, name, startup, teardown

    def up_step(self) -> Step:
        """(number, name, startup, teardown): a startup step and its undo."""
        return (self.number, self.name, self.startup, self.teardown)

    def down_step(self) -> Step:
        """(number, name, teardown, startup): a teardown step and its undo."""
        return (self.number, self.name, self.teardown, self.startup)


class States:
    """The dynamic states, as the control cpuhp kthread keeps them."""

    def __init__(self) -> None:
        self.table: dict[int, HotplugState] = {}
        self.gen = 0            # bumped at every change (the AP jobs are numbered by it)

    def reserve(self, section: int) -> int:
        """cpuhp_reserve_state(): the first free number of ``section``'s range.
        Return: the number; -ENOSPC when the range is full."""
        end = CPUHP_AP_ONLINE_DYN_END if section == CPUHP_AP_ONLINE_DYN else \
            CPUHP_BP_PREPARE_DYN_END
        return next((n for n in range(section, end) if n not in self.table), -errno.ENOSPC)

    def add(self, st: HotplugState) -> None:
        """cpuhp_store_callbacks(): install ``st`` at its number."""
        self.table[st.number] = st
        self.gen += 1

    def get(self, number: int) -> HotplugState:
        """The state ``number``.  Raises: ValueError (no such dynamic state)."""
        st = self.table.get(number)
        if st is None:
            raise ValueError(f"no hotplug state {number} (states are the numbers "
                             "cpuhp_setup_state() returned)")
        return st

    def remove(self, number: int) -> None:
        """Drop the state ``number`` (it exists: get() was asked first)."""
        del self.table[number]
        self.gen += 1

    def bp(self) -> list[HotplugState]:
        """The BP dynamic states, ascending."""
        return [self.table[n] for n in sorted(self.table) if not is_ap_state(n)]

    def ap(self) -> list[HotplugState]:
        """The AP dynamic states, ascending."""
        return [self.table[n] for n in sorted(self.table) if is_ap_state(n)]
