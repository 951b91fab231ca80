"""The timed hotplug experiment behind ``kproc hotplug cycle`` and the hotplug
benchmark: what cpu_down and cpu_up cost with per-CPU threads and
preferred-affine kthreads in place (kernel: what ``cpuhp/N`` and smpboot do
on a real offline/online, timed from user space).

``cycle_experiment`` registers per-CPU threads (``threads`` registrations of
an smpboot thread set) and ``preferred`` kthreads preferring the CPU, then
takes the CPU down and up ``count`` times (or for ``duration`` seconds),
timing each cpu_down / cpu_up,
the part cpuhp spent in teardown (parking per-CPU threads) and startup
(unparking, re-binding, re-affining), its sysfs write, and how long each
per-CPU thread of the CPU took to be back on it after cpu_up began.

How "back" is seen: each thread's ``unpark`` callback runs in the thread
once it runs again and writes when and where (``getcpu``) to a file in the
directory named by ``$KPROC_HOTPLUG_CLI_DIR`` (``report_dir``), which the
kthreads see because it is set before ``start()``.  A thread not back
within 2 s counts as lost.  The experiment registers and stops what it
made, also on failure; bringing CPUs back online is the caller's (the CLI
and the benchmark each restore every CPU they touched).
Context: the owner of a runtime (the callbacks: the per-CPU threads and
the preferred kthreads).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time

from .._kthread.body import kthread_should_stop
from .._kthread.control import kthread_affine_preferred, kthread_stop, wake_up_process
from .._kthread.create import kthread_create
from .._sched.schedule import schedule_timeout_interruptible
from .api import cpu_down, cpu_up
from .record import hotplug_stats
from .smpboot import (SmpHotplugThread, smpboot_register_percpu_thread,
                      smpboot_unregister_percpu_thread)
from .smpboot_thread import getcpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TypedDict

    from .._sched.task import Task  # typing only

    class CycleResult(TypedDict):
        """cycle_experiment()'s result: ns samples of each phase, and the lost count."""

        down: list[int]
        up: list[int]
        park: list[int]
        unpark: list[int]
        write_down: list[int]
        write_up: list[int]
        back: list[int]
        lost: int

__all__ = ["ENV_DIR", "report_dir", "cycle_experiment"]

ENV_DIR = "KPROC_HOTPLUG_CLI_DIR"
BACK_TIMEOUT = 2.0         # s: a per-CPU thread not back by then is lost
BACK_TICK = 0.0002         # s: between looks at the reports (a report lands in µs)


# -- callbacks (module level: the kthreads import them) -----------------------------

def _never(cpu: int) -> bool:
    return False


def _nothing(cpu: int) -> None:
    pass


def _back(cpu: int) -> None:
    """unpark callback: record when this per-CPU thread runs again, and where."""
    now, on = time.monotonic_ns(), getcpu()
    path = os.path.join(os.environ[ENV_DIR], f"back-{cpu}-{os.getpid()}")
    with open(path + ".tmp", "w") as f:
        f.write(f"{now} {on}")
    os.replace(path + ".tmp", path)


def _idle(_: object) -> int:
    while not kthread_should_stop():
        schedule_timeout_interruptible(1.0)
    return 0


# -- the experiment ------------------------------------------------------------------

@contextlib.contextmanager
def report_dir() -> Iterator[str]:
    """A private directory for the threads' reports, named in ``$KPROC_HOTPLUG_CLI_DIR``.

    Enter it before ``start()``: kthreads see the environment as it was then.
    Context: the caller.  Removed, and the variable restored, on exit.
    """
    old = os.environ.get(ENV_DIR)
    path = tempfile.mkdtemp(prefix="kproc-hotplug-")
    os.environ[ENV_DIR] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(ENV_DIR, None)
        else:
            os.environ[ENV_DIR] = old
        shutil.rmtree(path, ignore_errors=True)


def _wait_back(directory: str, cpu: int, pids: list[int], since_ns: int,
               timeout: float = BACK_TIMEOUT) -> dict[int, int]:
    """Per pid: ns from ``since_ns`` until its unpark callback ran on ``cpu``."""
    out: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(out) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid in out:
                continue
            try:
                with open(os.path.join(directory, f"back-{cpu}-{pid}")) as f:
                    ns, on = map(int, f.read().split())
            except (FileNotFoundError, ValueError):
                continue
            if ns >= since_ns and on == cpu:
                out[pid] = ns - since_ns
        time.sleep(BACK_TICK)
    return out


def _timed(action: Callable[[int], int], cpu: int, settle: float, total: list[int],
           part: list[int], write: list[int], part_field: str) -> int:
    """After ``settle`` s, run cpu_down/cpu_up; append its time to ``total``, its
    callbacks' part (``part_field`` of hotplug_stats()) to ``part`` and its sysfs
    write to ``write``.  Return: when it began (ns).  Raises: OSError unless it
    changed the CPU."""
    time.sleep(settle)
    t0 = time.monotonic_ns()
    rc = action(cpu)
    t1 = time.monotonic_ns()
    if rc == 1:
        state = "offline" if action is cpu_down else "online"
        raise OSError(errno.EBUSY, f"CPU {cpu} was already {state}: something else "
                      "changed it during the experiment")
    if rc:
        raise OSError(-rc if rc < 0 else errno.EIO, f"{action.__name__}({cpu}) failed: "
                      f"{os.strerror(-rc) if rc < 0 else rc}")
    st = hotplug_stats()
    total.append(t1 - t0)
    part.append(st[part_field])
    write.append(st["write_ns"])
    return t0


def cycle_experiment(cpu: int, count: int | None, threads: int = 1, preferred: int = 0,
                     progress: Callable[[], object] | None = None,
                     settle: float = 0.0, duration: float | None = None) -> CycleResult:
    """Take ``cpu`` down and up ``count`` times in the current runtime, or
    for ``duration`` seconds (at least one cycle; with both, whichever
    comes first ends it).

    @threads: SmpHotplugThread registrations (one thread per online CPU
    each); @preferred: kthreads preferring ``cpu`` (kthread_affine_preferred);
    @progress: called after each cycle, or None; @settle: seconds slept
    before each cpu_down and each cpu_up (not timed).
    Context: the owner of a runtime started inside report_dir(); the caller
    restores CPUs on failure.
    Return: {"down", "up", "park", "unpark", "write_down", "write_up", "back"}:
    lists of ns, plus "lost": per-CPU threads that were not back within 2 s.
    Raises: OSError (a registration failed; a cpu_down/cpu_up did not change
    the CPU: EBUSY when something else had changed it); ValueError (neither
    ``count`` nor ``duration``).
    """
    if count is None and duration is None:
        raise ValueError("cycle_experiment: give a count or a duration")
    hts: list[SmpHotplugThread] = []
    tasks: list[Task] = []
    res: CycleResult = {"down": [], "up": [], "park": [], "unpark": [], "write_down": [],
                        "write_up": [], "back": [], "lost": 0}
    try:
        for _ in range(threads):
            ht = SmpHotplugThread(_never, _nothing, "hpcycle/%u", unpark=_back)
            rc = smpboot_register_percpu_thread(ht)
            if rc:
                raise OSError(-rc, f"smpboot_register_percpu_thread: {os.strerror(-rc)}")
            hts.append(ht)
        for i in range(preferred):
            task = kthread_create(_idle, None, "hppref/%d", i)
            kthread_affine_preferred(task, {cpu})
            wake_up_process(task)
            tasks.append(task)
        end = None if duration is None else time.monotonic() + duration
        done = 0
        while done == 0 or ((count is None or done < count) and
                            (end is None or time.monotonic() < end)):
            done += 1
            _timed(cpu_down, cpu, settle, res["down"], res["park"], res["write_down"],
                   "teardown_ns")
            t2 = _timed(cpu_up, cpu, settle, res["up"], res["unpark"], res["write_up"],
                        "startup_ns")
            percpu = (ht.task(cpu) for ht in hts)
            pids = [task.pid for task in percpu if task is not None]
            back = _wait_back(os.environ[ENV_DIR], cpu, pids, t2)
            res["back"].extend(back.values())
            res["lost"] += len(hts) - len(back)
            if progress:
                progress()
    finally:
        for task in tasks:
            kthread_stop(task)
        for ht in hts:
            smpboot_unregister_percpu_thread(ht)
    return res
