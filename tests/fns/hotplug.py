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


def slow_down(cpu):
    """A teardown that keeps cpuhp busy for 0.3 s."""
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


# -- where callbacks run (AP on their CPU, BP on the control side) ----------------------

def _where():
    from kproc._hotplug.smpboot_thread import getcpu
    return getcpu(), ",".join(map(str, sorted(os.sched_getaffinity(0)))), os.getpid()


def where(what, cpu):
    """Log ``what cpu online on=<cpu> aff=<mask> pid=<pid>`` (the where columns)."""
    on, aff, pid = _where()
    with open(os.path.join(_dir(), "log"), "a") as f:
        f.write(f"{what} {cpu} {int(_online_now(cpu))} on={on} aff={aff} pid={pid}\n")
    if os.path.exists(os.path.join(_dir(), f"fail-{what}-{cpu}")):
        return -errno.EINVAL
    return 0


def ap_up(cpu):
    return where("ap_up", cpu)


def ap_down(cpu):
    return where("ap_down", cpu)


def bp_up(cpu):
    return where("bp_up", cpu)


def bp_down(cpu):
    return where("bp_down", cpu)


# -- hotplug calls from inside a callback ------------------------------------------------

def nested_down(cpu):
    """A startup that calls cpu_down(): logs what it got (the kernel would deadlock)."""
    rc = kproc.cpu_down(1)
    with open(os.path.join(_dir(), "nested"), "a") as f:
        f.write(f"{rc}\n")
    return 0


def nested_setup(cpu):
    rc = kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "nested", up_a, None)
    with open(os.path.join(_dir(), "nested"), "a") as f:
        f.write(f"{rc}\n")
    return 0


def nested_park(cpu):
    """An smpboot park callback that calls cpu_up()."""
    with open(os.path.join(_dir(), "nested"), "a") as f:
        f.write(f"{kproc.cpu_up(cpu)}\n")


# -- the per-CPU store, from every kind of process ---------------------------------------

def _store_line(who, cpu):
    task = STORE_HT.task(cpu)
    with open(os.path.join(_dir(), "store"), "a") as f:
        f.write(f"{who} {cpu} {task.pid if task is not None else None} {os.getpid()}\n")


def store_create(cpu):
    _store_line("create", cpu)


def store_setup(cpu):
    _store_line("setup", cpu)


def store_run(cpu):
    _store_ran.append(cpu)
    _store_line("thread_fn", cpu)


_store_ran = []


def store_once(cpu):
    """thread_should_run: True the first time only (this process is one thread)."""
    return not _store_ran


def store_startup(cpu):
    _store_line("cpuhp", cpu)
    return 0


def store_kthread(done):
    for cpu in sorted(kproc.cpu_online_mask()):
        _store_line("kthread", cpu)
    kproc.complete(done)
    return 0


STORE_HT = kproc.SmpHotplugThread(store_once, store_run, "hpstore/%u", create=store_create,
                                  setup=store_setup)


def store_lines(directory):
    try:
        with open(os.path.join(directory, "store")) as f:
            return [line.split() for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def hotplug_n_times(args):
    """threadfn: cycle ``cpu`` down and up ``n`` times; then wait to be stopped.
    Return: 0, or the first failing call's result."""
    cpu, n, started = args
    kproc.complete(started)
    for _ in range(n):
        rc = kproc.cpu_down(cpu) or kproc.cpu_up(cpu)
        if rc:
            return rc
    while not kproc.kthread_should_stop():
        kproc.schedule_timeout_interruptible(1.0)
    return 0
