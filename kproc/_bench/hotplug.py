"""CPU hotplug (root and a hot-pluggable CPU only): kproc's cpu_down/cpu_up
with 4 smpboot registrations (on 2 CPUs: 8 per-CPU threads, 4 on the CPU
cycled) and 4 kthreads preferring the CPU, against the raw sysfs write in
the same run; and changes made behind kproc's back, offline and online
reported apart.

How an external change is timed: the write's start and return are stamped;
cpuhp stamps when it saw the online mask change (``hotplug_stats``).  The
kernel flips the online mask and sends the ``online``/``offline`` uevent
*before* the write returns, and offline cpuhp (woken by that uevent) may run
on the one CPU left before the writer does, so "noticed − write returned"
was negative for some samples; a stale stamp (a change not noticed within
2 s) made others negative too.  Now a change not noticed within 2 s is
counted apart and gives no sample; the row kept for the target is the time
beyond the write's return, 0 for a change noticed while the write was still
in the kernel (their number is printed); the full time from the write's
start is shown beside it.
Context: each case in its own process (``kproc._bench.case``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import kproc
from .._core.topology import Topology
from .._hotplug.experiment import cycle_experiment, report_dir
from .._hotplug.record import hotplug_stats
from .common import Progress
from .progress import bar
from .report import LOWER, Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .harness import Run  # typing only

__all__ = ["CASES", "suite", "hotplug_cpu"]

CPU_DIR = "/sys/devices/system/cpu"
# Seconds before each offline and each online, in every loop: the kernel's own
# work after a hotplug slows a write that follows at once (docs/design.md).
SETTLE = float(os.environ.get("KPROC_BENCH_HP_SETTLE", "0.03"))
NOTICE_TIMEOUT = 2.0


def hotplug_cpu() -> int | None:
    """The first online CPU whose real online file is writable, or None."""
    if os.geteuid() != 0:
        return None
    topo = Topology()
    for cpu in sorted(topo.online() - {0}):
        if os.access(f"{CPU_DIR}/cpu{cpu}/online", os.W_OK):
            return cpu
    return None


def _bound_children(cpu: int, count: int) -> list[tuple[int, int, int]]:
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


def hotplug_raw(n: int) -> dict[str, list[int]]:
    """The raw writes; right after each online, the system calls of kproc's
    startup made by a plain process (its floor): re-bind and wake 4 children
    bound to the CPU, re-affine 4 others."""
    cpu, topo = hotplug_cpu(), Topology()
    assert cpu is not None
    out: dict[str, list[int]] = {"down": [], "up": [], "floor": []}
    kids = _bound_children(cpu, 4)
    others = [subprocess.Popen(["sleep", "3600"]) for _ in range(4)]
    progress = Progress(n)
    try:
        for i in range(n):
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
            progress(i + 1)
    finally:
        topo.set_online(cpu, True)
        for pid, w, r2 in kids:
            os.kill(pid, signal.SIGKILL)     # a sibling may hold its pipe open
            os.waitpid(pid, 0)
            os.close(w)
            os.close(r2)
        for p in others:
            p.kill()
            p.wait()
    return out


def hotplug_kproc(n: int) -> Any:
    """``n`` cycles of cpu_down/cpu_up (``cycle_experiment``)."""
    cpu = hotplug_cpu()
    assert cpu is not None
    progress = Progress(n)
    done = [0]

    def tick() -> None:
        done[0] += 1
        progress(done[0])
    try:
        with report_dir(), kproc.start():
            res = cycle_experiment(cpu, n, threads=4, preferred=4, settle=SETTLE,
                                   progress=tick)
            kproc.cpu_up(cpu)
    finally:
        Topology().set_online(cpu, True)
    return res


def _never(cpu: int) -> bool:
    return False


def _nothing(cpu: int) -> None:
    pass


def hotplug_detect(n: int) -> dict[str, Any]:
    """``n`` offline and ``n`` online writes behind kproc's back: per
    direction, the write's time, the notice from the write's start, the
    notice beyond the write's return, and the per-CPU thread parked or
    running from the write's start (ns)."""
    cpu = hotplug_cpu()
    assert cpu is not None
    out: dict[str, Any] = {"netlink": None, "lost": 0}
    for d in ("down", "up"):
        out[d] = {"write": [], "from_start": [], "after": [], "during": 0, "handled": []}
    path = f"{CPU_DIR}/cpu{cpu}/online"
    progress = Progress(2 * n)
    try:
        with kproc.start():
            ht = kproc.SmpHotplugThread(_never, _nothing, "hpdetect/%u")
            kproc.smpboot_register_percpu_thread(ht)
            task = ht.task(cpu)
            assert task is not None
            out["netlink"] = hotplug_stats()["netlink"]
            for i in range(2 * n):
                online = i % 2 == 1
                d = out["up" if online else "down"]
                time.sleep(SETTLE)
                events = hotplug_stats()["events"]
                t0 = time.monotonic_ns()
                with open(path, "w") as f:
                    f.write("1" if online else "0")
                t1 = time.monotonic_ns()
                deadline = time.monotonic() + NOTICE_TIMEOUT
                while hotplug_stats()["events"] == events and time.monotonic() < deadline:
                    time.sleep(0.0001)
                st = hotplug_stats()
                if st["events"] == events or st["event_ns"] < t0:
                    out["lost"] += 1
                    continue
                d["write"].append(t1 - t0)
                d["from_start"].append(st["event_ns"] - t0)
                d["after"].append(max(0, st["event_ns"] - t1))
                d["during"] += st["event_ns"] < t1
                want = kproc.TASK_INTERRUPTIBLE if online else kproc.TASK_PARKED
                while kproc.task_state(task) != want and time.monotonic() < deadline:
                    time.sleep(0.0001)
                d["handled"].append(time.monotonic_ns() - t0)
                progress(i + 1)
            kproc.smpboot_unregister_percpu_thread(ht)
    finally:
        Topology().set_online(cpu, True)
    return out


CASES: dict[str, Any] = {"hotplug_raw": hotplug_raw, "hotplug_kproc": hotplug_kproc,
                         "hotplug_detect": hotplug_detect}


def suite(run: Run) -> None:
    """The offline, online and external-change tables.  Context: the harness."""
    cpu = hotplug_cpu()
    if cpu is None:
        run.say("\nCPU hotplug: not run (needs root and a writable "
                "/sys/devices/system/cpu/cpuN/online)")
        return
    n = 20 if run.quick else 100
    with bar(3, "hotplug", unit="case") as b:
        raw = run.case("hotplug_raw", n, b)
        b.update()
        kp = run.case("hotplug_kproc", n, b)
        b.update()
        det = run.case("hotplug_detect", n, b)
        b.update()
    what = "4 smpboot registrations + 4 preferred-affine kthreads"
    down = Table("hotplug_down", f"CPU {cpu} offline: cpu_down with {what}, against the raw "
                 "sysfs write", LOWER, "kproc", unit="ms", scale=1e6)
    down.rows += [run.dist("raw", "raw sysfs write 0", raw["down"]),
                  run.dist("kproc", "kproc cpu_down", kp["down"]),
                  run.dist("teardown", "teardown (parking the per-CPU threads)", kp["park"],
                           sub=True),
                  run.dist("write", "its sysfs write", kp["write_down"], sub=True)]
    up = Table("hotplug_up", f"CPU {cpu} online: cpu_up with {what}, against the raw sysfs "
               "write", LOWER, "kproc", unit="ms", scale=1e6)
    up.rows += [run.dist("raw", "raw sysfs write 1", raw["up"]),
                run.dist("kproc", "kproc cpu_up", kp["up"]),
                run.dist("startup", "startup (unpark, re-bind, re-affine)", kp["unpark"],
                         sub=True),
                run.dist("write", "its sysfs write", kp["write_up"], sub=True),
                run.dist("floor", "startup's system calls from a plain process",
                         raw["floor"], sub=True),
                run.dist("back", "each per-CPU thread back on its CPU, from cpu_up's start",
                         kp["back"], sub=True)]
    if kp["lost"]:
        up.notes.append(f"{kp['lost']} per-CPU thread(s) were not back within 2 s")
    run.add(down)
    run.add(up)
    how = "netlink uevents" if det["netlink"] else "polling"
    for key, verb, state in (("down", "offline", "parked"), ("up", "online", "running")):
        d = det[key]
        t = Table(f"external_{key}", f"External {verb} of CPU {cpu} (raw write behind "
                  f"kproc's back; cpuhp watches {how})", LOWER, "noticed", unit="ms",
                  scale=1e6)
        t.rows += [run.dist("noticed", "noticed, beyond the write's return", d["after"]),
                   run.dist("from_start", "noticed, from the write's start", d["from_start"],
                            sub=True),
                   run.dist("write", "the write itself", d["write"], sub=True),
                   run.dist("handled", f"per-CPU thread {state}, from the write's start",
                            d["handled"], sub=True)]
        t.notes.append(f"{d['during']} of {len(d['after'])} changes were noticed before the "
                       "write returned (the kernel announces them first): counted as 0")
        run.add(t)
    if det["lost"]:
        run.say(f"  {det['lost']} external change(s) not noticed within "
                f"{NOTICE_TIMEOUT:g} s (no sample)")
