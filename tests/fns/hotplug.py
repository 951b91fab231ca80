"""Module-level hotplug callbacks for the tests (cpuhp and kthreads import them).

They log to ``$KPROC_HP_DIR/log`` (one line per call: what, CPU, whether the
CPU's online file said 1 at that moment) and fail with -EINVAL when a file
``fail-<what>-<cpu>`` exists there.
"""

import errno
import os
import time

import kproc


def _dir():
    return os.environ["KPROC_HP_DIR"]


def _online_now(cpu):
    path = os.path.join(os.environ.get("KPROC_HP_SYSFS", "/sys"),
                        f"devices/system/cpu/cpu{cpu}/online")
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return True


def log(what, cpu):
    with open(os.path.join(_dir(), "log"), "a") as f:
        f.write(f"{what} {cpu} {int(_online_now(cpu))}\n")
    if os.path.exists(os.path.join(_dir(), f"fail-{what}-{cpu}")):
        return -errno.EINVAL
    return 0


def read_log(directory):
    try:
        with open(os.path.join(directory, "log")) as f:
            return [tuple(line.split()) for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def up_a(cpu):
    return log("up_a", cpu)


def slow_up(cpu):
    """A startup that keeps cpuhp busy for 0.3 s."""
    time.sleep(0.3)
    return 0


def down_a(cpu):
    return log("down_a", cpu)


def up_b(cpu):
    return log("up_b", cpu)


def down_b(cpu):
    return log("down_b", cpu)


def up_c(cpu):
    return log("up_c", cpu)


def down_c(cpu):
    return log("down_c", cpu)


def raises(cpu):
    raise RuntimeError(f"startup callback failing on purpose (CPU {cpu})")


# -- smpboot ---------------------------------------------------------------------------

def never(cpu):
    return False


def nothing(cpu):
    pass


def setup(cpu):
    log("setup", cpu)


def cleanup(cpu, online):
    log(f"cleanup{int(online)}", cpu)


def park(cpu):
    log("park", cpu)


def unpark(cpu):
    log("unpark", cpu)


def create(cpu):
    log("create", cpu)


# two registrations told apart in the log (smpboot's walk orders)

def create_old(cpu):
    log("create_old", cpu)


def create_new(cpu):
    log("create_new", cpu)


def park_old(cpu):
    log("park_old", cpu)


def park_new(cpu):
    log("park_new", cpu)


# -- the stress thread: runs every ~2 ms, checks where it runs ------------------------

_runs = {}


def always(cpu):
    return True


def where_am_i(cpu):
    """thread_fn: count the run; record it if it is not on ``cpu`` with affinity {cpu}."""
    from kproc._hotplug.smpboot_thread import getcpu
    on, aff = getcpu(), os.sched_getaffinity(0)
    _runs[cpu] = _runs.get(cpu, 0) + 1
    if on != cpu or aff != {cpu}:
        with open(os.path.join(_dir(), f"wrong-{cpu}"), "a") as f:
            f.write(f"{time.monotonic_ns()} on={on} aff={sorted(aff)}\n")
    kproc.schedule_timeout_interruptible(0.002)


def save_runs(cpu, *online):
    with open(os.path.join(_dir(), f"runs-{cpu}"), "w") as f:
        f.write(str(_runs.get(cpu, 0)))


def preferred_loop(started):
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        kproc.schedule_timeout_interruptible(1.0)
    return 0


def hotplug_forever(cpu):
    """threadfn: cycle ``cpu`` down and up until killed."""
    while True:
        kproc.cpu_down(cpu)
        kproc.cpu_up(cpu)
