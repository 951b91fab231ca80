"""What tests share: waiting on observable state, the kthreads alive, real-hotplug checks.

Tests import from here, never from another test module or from conftest.
"""

import os
import time

import psutil

import kproc
from fns import work as work_fns


def wait_until(predicate, timeout=2.0, interval=0.002, message=None):
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Raises AssertionError with ``message`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if callable(message):
                message = message()
            raise AssertionError(message or f"timed out after {timeout}s waiting for "
                                 f"{getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


def live_kthreads(rt):
    """kthreadd's children that are kthreads (not spares), alive."""
    out = []
    for p in psutil.Process(rt.kthreadd_pid).children():
        try:
            # a spare just forked is still named kthreadd until it renames itself
            if p.status() != psutil.STATUS_ZOMBIE and \
                    p.name() not in ("kproc-spare", "kthreadd"):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def run_started(threadfn, args, name, state=None):
    """kthread_run(threadfn, args + (started,)); wait until it completed
    ``started`` and, if given, until it sleeps in ``state``.  Return: the Task."""
    started = kproc.Completion()
    task = kproc.kthread_run(threadfn, tuple(args) + (started,), name)
    kproc.wait_for_completion(started)
    if state is not None:
        wait_until(lambda: kproc.task_state(task) == state,
                   message=lambda: f"{name} never reached {state!r}")
    return task


def blocked(worker):
    """Queue a work that blocks ``worker``; return the Completion releasing it."""
    started, release = kproc.Completion(), kproc.Completion()
    kproc.kthread_queue_work(worker, kproc.KthreadWork(work_fns.block, (started, release)))
    kproc.wait_for_completion(started)
    return release


def wait_past(t):
    """Wait until the monotonic clock passes ``t`` (for tests whose property is time)."""
    wait_until(lambda: time.monotonic() > t, timeout=5.0, interval=0.001)


REAL_CPU_DIR = "/sys/devices/system/cpu"


def real_hotplug_cpu():
    """A CPU whose real online file we may write, or None."""
    if os.environ.get("KPROC_REAL_HOTPLUG", "1") == "0" or os.geteuid() != 0:
        return None
    for cpu in sorted(kproc._core.topology.Topology().possible() - {0}):
        path = f"{REAL_CPU_DIR}/cpu{cpu}/online"
        if os.access(path, os.W_OK):
            return cpu
    return None


def all_online(root):
    """Write 1 to every online file under ``root`` that says 0."""
    cpu_dir = os.path.join(root, "devices/system/cpu")
    for name in os.listdir(cpu_dir):
        path = os.path.join(cpu_dir, name, "online")
        if name[3:].isdigit() and os.path.exists(path):
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:
                f.write("1")
    if root != "/sys":
        kproc._core.topology.Topology(root)._rewrite_online()
