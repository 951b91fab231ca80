"""kthreadd's spare children, forked in batches (``fork.fork_children``, native/forkloop.c,
or one ``os.fork`` at a time without the C extension), and reaping by pid.

Kernel rules (kernel/kthread.c, 6.15): every kthread is a child of kthreadd
(kthreadd() line 818, create_kthread() line 479: ``kernel_thread()``), so
kthreadd reaps each; kthread_stop() returns once the kthread has exited
(line 791, ``wait_for_completion(&kthread->exited)``), whatever ended it.
"""

import errno
import os
import signal
import time

import psutil
import pytest

import kproc
from kproc._core import layout as L
from fns import kthread as kfuncs
from fns import pool as pool_fns
from helpers import live_kthreads, run_started, wait_until

pytestmark = pytest.mark.timeout(40)

POOL = [L.HEADER.spares + 4 * e for e in range(L.SPARE_POOL)]


def _ready(rt):
    return [off for off in POOL if rt.arena.mem.load32(off) == L.SPARE_READY]


def _children(rt):
    """kthreadd's children: {pid: (name, status)}."""
    out = {}
    for p in psutil.Process(rt.kthreadd_pid).children():
        try:
            out[p.pid] = (p.name(), p.status())
        except psutil.NoSuchProcess:
            pass
    return out


def _spares(rt):
    return {pid for pid, (name, _) in _children(rt).items() if name == "kproc-spare"}


def _zombies(rt):
    return [pid for pid, (_, status) in _children(rt).items()
            if status == psutil.STATUS_ZOMBIE]


def _held_slots(rt):
    mem, T = rt.arena.mem, L.TASK
    return [idx for idx in range(rt.arena.params.max_kthreads)
            if mem.load32(rt.arena.task_off(idx) + T.slot) not in (L.SLOT_FREE, L.SLOT_DEAD)]


def test_spares_killed_while_waiting_are_reaped_and_replaced(monkeypatch):
    """Spares SIGKILLed before any claim (not kthreads: no slot says they are
    leaving) are reaped at once by the sweep, replaced by a new batch, and
    creates still work, leaving no zombie and no held slot."""
    monkeypatch.setenv("KPROC_SPARES", "4")
    with kproc.start() as rt:
        wait_until(lambda: len(_ready(rt)) == 4 and len(_spares(rt)) == 4, 5.0,
                   message="the first batch of spares never became ready")
        first = _spares(rt)
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        # (refilled once half or fewer are ready: more than half are, after)
        wait_until(lambda: len(_ready(rt)) > 2 and not _spares(rt) & first, 5.0,
                   message=lambda: f"killed spares {first} not replaced: pool "
                   f"{[rt.arena.mem.load32(o) for o in POOL]}, children {_children(rt)}")
        assert not _zombies(rt), "a killed spare was left unreaped"
        ran = kproc.Completion()
        t = kproc.kthread_run(kfuncs.complete_then_return, (ran, 7), "after-kills")
        assert t.pid not in first
        kproc.wait_for_completion(ran)
        assert kproc.kthread_stop(t) == 7
        wait_until(lambda: not _held_slots(rt), 2.0)


def test_a_kill_sharing_a_sigchld_with_an_exit_is_reaped_within_a_second():
    """One kthread exits on its own (reaped by pid) while another is SIGKILLed
    at the same moment (its slot never says it is leaving): the sweep owed
    after a reap by pid reaps the killed one too, so its kthread_stop() returns
    -EOWNERDEAD within a second and no zombie is left."""
    with kproc.start() as rt:
        for _ in range(5):
            ran, started = kproc.Completion(), kproc.Completion()
            quitter = kproc.kthread_run(kfuncs.complete_then_return, (ran, 3), "quitter")
            victim = kproc.kthread_run(kfuncs.loop_until_stop, started, "victim")
            kproc.wait_for_completion(started)
            kproc.wait_for_completion(ran)        # it returns now: an exit by itself
            os.kill(victim.pid, signal.SIGKILL)
            t0 = time.monotonic()
            assert kproc.kthread_stop(quitter) == 3
            assert kproc.kthread_stop(victim) == -errno.EOWNERDEAD
            assert victim.exit_signal == signal.SIGKILL
            assert time.monotonic() - t0 < 1.0
        wait_until(lambda: not _zombies(rt), 2.0, message="a kthread was left unreaped")
        wait_until(lambda: not live_kthreads(rt), 2.0)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.02])
def test_kthreadd_killed_while_forking_spares_leaves_none_behind(monkeypatch, delay):
    """kthreadd SIGKILLed while (or just after) it forks a batch of spares: each
    spare arms PR_SET_PDEATHSIG first thing after fork (and leaves if kthreadd
    died before that), so none outlives it."""
    monkeypatch.setenv("KPROC_SPARES", "16")
    rt = kproc.start()
    try:
        time.sleep(delay)              # a moment into the first batch
        kthreadd = psutil.Process(rt.kthreadd_pid)
        kids = kthreadd.children()
        os.kill(rt.kthreadd_pid, signal.SIGKILL)
        kids += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "kproc-spare"]

        def alive():
            out = []
            for p in kids:
                try:
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out.append(p.pid)
                except psutil.NoSuchProcess:
                    pass
            return out
        wait_until(lambda: not alive(), 2.0, message="a spare outlived kthreadd")
    finally:
        rt.shutdown()


# threadfn, data, what kthread_stop() returns; "stopped" is never woken
EXIT_PATHS = {
    "returned": (kfuncs.ret_value, 5, 5),
    "kthread_exit": (kfuncs.exit_with, 6, 6),
    "exception": (kfuncs.raise_error, "expected by the test", -errno.EFAULT),
    "stopped-before-run": (kfuncs.ret_value, 1, -errno.EINTR),
    "os._exit": (pool_fns.die, 3, -errno.EOWNERDEAD),
    "killed": (kfuncs.loop_until_stop, None, -errno.EOWNERDEAD),
}


@pytest.mark.parametrize("path", sorted(EXIT_PATHS))
def test_every_exit_path_is_reaped_among_live_kthreads(path):
    """However a kthread ends, kthreadd reaps it (kernel: every kthread is
    kthreadd's child, kthreadd() line 818; kthread_stop() returns the result
    once it exited, line 791), with other kthreads alive: those that leave by
    themselves are reaped by pid from the arena's exiting stack (which is left
    empty), the others (a kill, os._exit) by the sweep over every child."""
    threadfn, data, want = EXIT_PATHS[path]
    with kproc.start() as rt:
        others = [run_started(kfuncs.park_loop, (), f"parked{i}") for i in range(12)]
        for t in others:
            kproc.kthread_park(t)
        for i in range(3):
            if path == "stopped-before-run":
                task = kproc.kthread_create(threadfn, data, f"leaver{i}")
            else:
                task = kproc.kthread_run(threadfn, data, f"leaver{i}")
            if path == "killed":
                wait_until(lambda: kproc.task_state(task) == kproc.TASK_INTERRUPTIBLE)
                os.kill(task.pid, signal.SIGKILL)
            pid = task.pid
            if path == "stopped-before-run":
                assert kproc.kthread_stop(task) == want
            wait_until(lambda: not psutil.pid_exists(pid), 1.0,
                       message=f"a kthread that ended by {path} was not reaped")
            if path != "stopped-before-run":
                assert kproc.kthread_stop(task) == want
        assert rt.arena.mem.load32(L.HEADER.exiting_head) == 0
        assert not _zombies(rt)
        for t in others:
            assert kproc.kthread_stop(t) == 3
        wait_until(lambda: not _held_slots(rt), 2.0)
        assert rt.arena.mem.load32(L.HEADER.exiting_head) == 0
