"""The kill storm and lock-holder death (SPEC §5: no blocking call waits
forever on a dead process; locks survive their holder's death; SIGKILL of the
owner leaves nothing).

Kill storm: trial i runs scenario i mod 9, so each gets the same share:
SIGKILL of a kthread never woken, sleeping, running, parked; of a kthread a
caller is blocked stopping or parking (it sits in a foreign call); of a
worker mid-work with callers blocked in flush and cancel_sync; of kthreadd
with callers in create, stop, park and a completion wait; of the owner (a
child process, killed 0-60 ms after it was spawned, often inside start()).
Every blocked call must return within 2 s of the kill (its time is the
recovery time); every process must be gone within 2 s.

Lock-holder death: hammer kthreads queue new works onto one worker as fast as
they can (so they are often inside the worker's lock) and are SIGKILLed at
random; every work whose queueing returned True must run exactly once, and no
work may run twice (one unrecorded success per kill is allowed: the kill can
fall between the queueing and its record).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import psutil

import kproc

from . import fns
from .harness import HANG_S, Blocked, Result, call_with_deadline

SCENARIOS = ["new", "sleeping", "running", "parked", "stop-blocked", "park-blocked",
             "worker-mid-work", "kthreadd", "owner"]


def _started(fn: Any, name: str) -> kproc.Task:
    started = kproc.Completion()
    t = kproc.kthread_run(fn, started, name)
    kproc.wait_for_completion(started)
    return t


def _kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def _expect_returns(r: Result, calls: list[tuple[str, Blocked]], t_kill: float) -> None:
    """Every blocked call returns within HANG_S of the kill."""
    for what, call in calls:
        if not call.wait(max(0.0, t_kill + HANG_S - time.monotonic())):
            r.hangs += 1
            r.note(f"{what} still blocked {HANG_S} s after the kill")
        else:
            r.recovery.append(time.monotonic() - t_kill)     # an upper bound


def _stop_killed(r: Result, t: kproc.Task, t_kill: float, what: str) -> None:
    ok, value, took = call_with_deadline(lambda: kproc.kthread_stop(t))
    if not ok:
        r.hangs += 1
        r.note(f"{what}: kthread_stop of the killed kthread hung")
        return
    r.recovery.append(time.monotonic() - t_kill)
    if value != -errno.EOWNERDEAD:
        r.errors += 1
        r.note(f"{what}: kthread_stop gave {value!r}, not -EOWNERDEAD")


def _simple(r: Result, kind: str) -> None:
    if kind == "new":
        t = kproc.kthread_create(fns.ret_data, 0, "ks-new")
    else:
        t = _started({"sleeping": fns.sleeper, "running": fns.spinner,
                      "parked": fns.parker}[kind], f"ks-{kind}")
        if kind == "parked" and kproc.kthread_park(t) != 0:
            r.errors += 1
    _stop_killed(r, t, _kill(t.pid), kind)


def _blocked_control(r: Result, kind: str) -> None:
    t = _started(fns.deaf, "ks-deaf")
    fn = kproc.kthread_stop if kind == "stop-blocked" else kproc.kthread_park
    call = Blocked(lambda: fn(t))
    time.sleep(random.uniform(0, 0.005))
    t_kill = _kill(t.pid)
    _expect_returns(r, [(kind, call)], t_kill)
    if kind == "park-blocked":
        ok, _, _ = call_with_deadline(lambda: kproc.kthread_stop(t))
        r.hangs += not ok


def _worker_mid_work(r: Result) -> None:
    w = kproc.kthread_create_worker(0, "ks-worker")
    started = kproc.Completion()
    work = kproc.KthreadWork(fns.work_block, (started, 30.0))
    kproc.kthread_queue_work(w, work)
    kproc.wait_for_completion(started)
    calls = [("flush_work", Blocked(lambda: kproc.kthread_flush_work(work))),
             ("cancel_work_sync", Blocked(lambda: kproc.kthread_cancel_work_sync(work))),
             ("flush_worker", Blocked(lambda: kproc.kthread_flush_worker(w)))]
    time.sleep(random.uniform(0, 0.005))
    _expect_returns(r, calls, _kill(w.task.pid))
    ok, _, _ = call_with_deadline(lambda: kproc.kthread_destroy_worker(w))
    if not ok:
        r.hangs += 1
        r.note("destroy_worker of a killed worker hung")


def _kthreadd(r: Result, backend: str) -> None:
    rt = kproc.start(backend=backend, max_kthreads=64)
    try:
        deaf1, deaf2 = _started(fns.deaf, "kd-deaf1"), _started(fns.deaf, "kd-deaf2")
        pids = [deaf1.pid, deaf2.pid]

        def creates() -> None:
            while True:
                kproc.kthread_stop(kproc.kthread_create(fns.ret_data, 0, "kd-c"))
        c = kproc.Completion()
        calls = [("create", Blocked(creates)), ("stop", Blocked(lambda: kproc.kthread_stop(deaf1))),
                 ("park", Blocked(lambda: kproc.kthread_park(deaf2))),
                 ("wait_for_completion", Blocked(lambda: kproc.wait_for_completion(c)))]
        time.sleep(random.uniform(0.001, 0.01))
        t_kill = _kill(rt.kthreadd_pid)
        _expect_returns(r, calls, t_kill)
        _gone(r, pids, t_kill, "kthreadd's kthreads")
    finally:
        ok, _, _ = call_with_deadline(rt.shutdown, 10)
        if not ok:
            r.hangs += 1
            r.note("shutdown() after kthreadd's death hung")


def _gone(r: Result, pids: list[int], since: float, what: str) -> None:
    deadline = since + HANG_S
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and
                 psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.005)
    if alive:
        r.orphans += len(alive)
        r.note(f"{what} alive {HANG_S} s after the kill: {alive}")


OWNER_CHILD = """
import sys, kproc
from chaos import fns
rt = kproc.start(backend=sys.argv[1])
started = kproc.Completion()
kproc.kthread_run(fns.sleeper, started, "own-sleeper")
kproc.kthread_create_worker(0, "own-worker")
kproc.wait_for_completion(started)
print("up", flush=True)
sys.stdin.read()
"""


def _owner(r: Result, backend: str) -> None:
    trial = uuid.uuid4().hex
    env = dict(os.environ, CHAOS_TRIAL=trial)
    child = subprocess.Popen([sys.executable, "-c", OWNER_CHILD, backend], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    time.sleep(random.uniform(0.0, 0.3) if random.random() < 0.5 else random.uniform(0.05, 0.09))
    t_kill = _kill(child.pid)
    child.wait()
    child.stdin.close()       # type: ignore[union-attr]
    deadline = t_kill + HANG_S
    while (left := _trial_processes(trial)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if left:
        r.orphans += len(left)
        r.note(f"owner killed: {len(left)} processes left after {HANG_S} s")
        for p in left:
            p.kill()
    else:
        r.recovery.append(time.monotonic() - t_kill)


def _trial_processes(trial: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("CHAOS_TRIAL") == trial and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def kill_storm(r: Result, trials: int) -> None:
    """The kill storm: ``trials`` trials over SCENARIOS."""
    counts = dict.fromkeys(SCENARIOS, 0)
    for i in range(trials):
        kind = SCENARIOS[i % len(SCENARIOS)]
        counts[kind] += 1
        r.trials += 1
        try:
            if kind == "kthreadd":
                kproc.shutdown()
                _kthreadd(r, r.backend)
            elif kind == "owner":
                _owner(r, r.backend)
            else:
                kproc.start(backend=r.backend, max_kthreads=256) if _no_runtime() else None
                if kind in ("new", "sleeping", "running", "parked"):
                    _simple(r, kind)
                elif kind == "worker-mid-work":
                    _worker_mid_work(r)
                else:
                    _blocked_control(r, kind)
        except Exception as exc:      # an unexpected error is a figure, not the end
            r.errors += 1
            r.note(f"{kind}: {type(exc).__name__}: {exc}")
            kproc.shutdown()
    r.extra["per_scenario"] = min(counts.values())


def _no_runtime() -> bool:
    from kproc._core import runtime as _rt     # the default runtime, if one is up
    return _rt._runtime is None or _rt._runtime.closed


def lock_holder_death(r: Result, kills: int, hammers: int = 3) -> None:
    """Hammer kthreads SIGKILLed at random while queueing onto one worker."""
    tmp = tempfile.mkdtemp(prefix="kproc-chaos-")
    queued, executed = os.path.join(tmp, "queued"), os.path.join(tmp, "executed")
    kproc.start(backend=r.backend, max_kthreads=64, max_works=4096)
    w = kproc.kthread_create_worker(0, "lh-worker")
    live: list[kproc.Task] = []
    serial = 0

    def spawn() -> None:
        nonlocal serial
        started = kproc.Completion()
        live.append(kproc.kthread_run(fns.hammer, (w, queued, executed, f"h{serial}",
                                                   started), "lh-hammer/%d", serial))
        serial += 1
        kproc.wait_for_completion(started)
    # Made before the hammers start: they keep the work table full by design.
    probe = kproc.KthreadWork(fns.work_noop)
    for _ in range(hammers):
        spawn()
    for _ in range(kills):
        time.sleep(random.uniform(0.001, 0.02))
        victim = live.pop(random.randrange(len(live)))
        t_kill = _kill(victim.pid)
        ok, value, _ = call_with_deadline(lambda: kproc.kthread_stop(victim))
        if not ok:
            r.hangs += 1
        ok, _, _ = call_with_deadline(lambda: (kproc.kthread_queue_work(w, probe),
                                               kproc.kthread_flush_work(probe)))
        if ok:
            r.recovery.append(time.monotonic() - t_kill)
        else:
            r.hangs += 1
            r.note("the worker did not run a work after a hammer was killed")
            break
        r.trials += 1
        spawn()
    for t in live:
        kproc.kthread_stop(t)
    ok, _, _ = call_with_deadline(lambda: kproc.kthread_flush_worker(w), 10)
    r.hangs += not ok
    kproc.kthread_destroy_worker(w)
    kproc.shutdown()
    _count_works(r, fns.read_ids(queued), fns.read_ids(executed), r.trials)
    for name in (queued, executed):
        if os.path.exists(name):
            os.unlink(name)
    os.rmdir(tmp)


def _count_works(r: Result, queued: list[str], executed: list[str], kills: int) -> None:
    ran: dict[str, int] = {}
    for ident in executed:
        ran[ident] = ran.get(ident, 0) + 1
    r.dup = sum(n - 1 for n in ran.values() if n > 1)
    r.lost = sum(1 for ident in set(queued) if ident not in ran)
    unrecorded = len(set(ran) - set(queued))
    if unrecorded > kills:
        r.errors += 1
        r.note(f"{unrecorded} works ran that no hammer recorded (at most {kills} allowed)")
    r.extra["works"] = len(queued)
    r.extra["unrecorded"] = unrecorded
    if r.lost:
        r.note("lost: " + json.dumps(sorted(set(queued) - set(ran))[:5]))
