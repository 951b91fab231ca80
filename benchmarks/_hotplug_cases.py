"""Hotplug cases (root and a hot-pluggable CPU only): ``python -m benchmarks._cases NAME N``.

* ``hotplug_raw``: the floor, ``N`` offline/online cycles of the sysfs write
  alone (Topology.set_online: write, read back); after each online, the system
  calls of kproc's startup made by a plain process (its floor).
* ``hotplug_kproc``: ``N`` cycles of cpu_down/cpu_up with 4 SmpHotplugThread
  registrations (on 2 CPUs: 8 per-CPU threads, 4 of them on the CPU cycled),
  an AP state (CPUHP_AP_ONLINE_DYN, run on the CPU in cpuhp/N) and 4 kthreads
  preferring that CPU.
* ``hotplug_detect``: ``N`` changes made by a raw write behind kproc's back;
  how long after the write returned cpuhp noticed it, and until the per-CPU
  thread of the CPU was parked (offline) or running again (online); also
  apart (``*_offline``, ``*_online``).  The kernel sends the uevent before
  the write returns, so a change can be noticed before: a negative sample.

Each prints a JSON object of sample lists (ns); every CPU is online at the end.
"""

import os
import signal
import time

CPU_DIR = "/sys/devices/system/cpu"
# s before each offline and each online, in both loops: the kernel's own work after a
# hotplug (sched domains, RCU, per-CPU kworkers) slows a write that follows at once, and
# the two loops would otherwise follow at different distances (kproc's waits for its
# per-CPU threads to be back; the raw loop does not).
SETTLE = float(os.environ.get("KPROC_BENCH_HP_SETTLE", "0.03"))
POLL = 0.0002     # s: between looks at what cpuhp did (hotplug_detect)


def hotplug_cpu():
    """The first CPU whose real online file is writable, or None."""
    if os.geteuid() != 0:
        return None
    from kproc._core.topology import Topology
    for cpu in sorted(Topology().possible() - {0}):
        if os.access(f"{CPU_DIR}/cpu{cpu}/online", os.W_OK):
            return cpu
    return None


def _restore(cpu):
    from kproc._core.topology import Topology
    Topology().set_online(cpu, True)


def _bound_children(cpu, count):
    """``count`` children bound to ``cpu``, each answering a byte on a pipe."""
    kids = []
    for _ in range(count):
        r, w = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.sched_setaffinity(0, {cpu})
                while os.read(r, 1):
                    os.write(w2, b"x")
            finally:
                os._exit(0)
        os.close(r)
        os.close(w2)
        kids.append((pid, w, r2))
    return kids


def hotplug_raw(n):
    """The raw writes; and, right after each online, the floor of kproc's startup:
    the same system calls made by a plain process (re-bind and wake 4 children
    bound to the CPU, like the per-CPU threads; re-affine 4 others, like the
    preferred kthreads), timed as kproc's startup is: until the calls returned."""
    import subprocess
    from kproc._core.topology import Topology
    cpu, topo = hotplug_cpu(), Topology()
    out = {"down": [], "up": [], "floor": []}
    kids = _bound_children(cpu, 4)
    others = [subprocess.Popen(["sleep", "3600"]) for _ in range(4)]
    try:
        for _ in range(n):
            time.sleep(SETTLE)
            t0 = time.monotonic_ns()
            topo.set_online(cpu, False)
            t1 = time.monotonic_ns()
            time.sleep(SETTLE)
            t1b = time.monotonic_ns()
            topo.set_online(cpu, True)
            t2 = time.monotonic_ns()
            for pid, w, _ in kids:
                os.sched_setaffinity(pid, {cpu})
                os.write(w, b"x")
            for p in others:
                os.sched_setaffinity(p.pid, {cpu})
            out["floor"].append(time.monotonic_ns() - t2)
            for _, _, r2 in kids:
                os.read(r2, 1)
            out["down"].append(t1 - t0)
            out["up"].append(t2 - t1b)
    finally:
        _restore(cpu)
        for pid, w, r2 in kids:
            os.kill(pid, signal.SIGKILL)     # a sibling may hold its pipe open
            os.waitpid(pid, 0)
            os.close(w)
            os.close(r2)
        for p in others:
            p.kill()
            p.wait()
    return out


def _ok(cpu):
    return 0


def hotplug_kproc(n):
    import kproc
    from kproc._hotplug.experiment import cycle_experiment, report_dir
    cpu = hotplug_cpu()
    try:
        with report_dir(), kproc.start():
            kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "bench:online", _ok, _ok)
            res = cycle_experiment(cpu, n, threads=4, preferred=4, settle=SETTLE)
            kproc.cpu_up(cpu)
    finally:
        _restore(cpu)
    return res


def _never(cpu):
    return False


def _nothing(cpu):
    pass


def hotplug_detect(n):
    import kproc
    from kproc._hotplug.record import hotplug_stats
    cpu = hotplug_cpu()
    out = {"noticed": [], "handled": [], "netlink": None, "noticed_offline": [],
           "noticed_online": [], "handled_offline": [], "handled_online": []}
    path = f"{CPU_DIR}/cpu{cpu}/online"
    try:
        with kproc.start():
            ht = kproc.SmpHotplugThread(_never, _nothing, "hpdetect/%u")
            kproc.smpboot_register_percpu_thread(ht)
            task = ht.task(cpu)
            out["netlink"] = hotplug_stats()["netlink"]
            for i in range(2 * n):
                online = i % 2 == 1
                events = hotplug_stats()["events"]
                with open(path, "w") as f:
                    f.write("1" if online else "0")
                t0 = time.monotonic_ns()
                deadline = time.monotonic() + 2.0
                # poll, not spin: a spinning observer takes CPU 0 from cpuhp while the
                # CPU just brought up is still slow to run anything
                while hotplug_stats()["events"] == events and time.monotonic() < deadline:
                    time.sleep(POLL)
                noticed = hotplug_stats()["event_ns"] - t0
                want = kproc.TASK_INTERRUPTIBLE if online else kproc.TASK_PARKED
                while kproc.task_state(task) != want and time.monotonic() < deadline:
                    time.sleep(POLL)
                handled = time.monotonic_ns() - t0
                which = "online" if online else "offline"
                out["noticed"].append(noticed)
                out["handled"].append(handled)
                out["noticed_" + which].append(noticed)
                out["handled_" + which].append(handled)
                time.sleep(0.02)
            kproc.smpboot_unregister_percpu_thread(ht)
    finally:
        _restore(cpu)
    return out


CASES = {"hotplug_raw": hotplug_raw, "hotplug_kproc": hotplug_kproc,
         "hotplug_detect": hotplug_detect}
