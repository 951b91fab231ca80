"""The command line (SPEC §6): `kproc ps`, and the dispatch of every subcommand."""

import json
import subprocess
import sys

import pytest

import kproc
from fns import kthread as kfuncs

pytestmark = pytest.mark.timeout(30)


def _ps(*args):
    out = subprocess.run([sys.executable, "-m", "kproc", "ps", *args], capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_ps_json_lists_kthreads_with_state_flags_and_affinity(rt):
    started = kproc.Completion()
    loop = kproc.kthread_run(kfuncs.loop_until_stop, started, "ps-loop")
    kproc.wait_for_completion(started)
    parked = kproc.kthread_create_on_cpu(kfuncs.ret_value, 0, 0, "ps-cpu/%u")
    kproc.kthread_park(parked)
    runtimes = [r for r in json.loads(_ps("--json")) if r["kthreadd"] == rt.kthreadd_pid]
    assert len(runtimes) == 1
    rows = {t["name"]: t for t in runtimes[0]["kthreads"]}
    assert rows["ps-loop"]["pid"] == loop.pid
    assert rows["ps-loop"]["state"] == "TASK_INTERRUPTIBLE"
    assert rows["ps-cpu/0"]["state"] == "TASK_PARKED"
    assert rows["ps-cpu/0"]["affinity"] == [0]
    assert "K" in rows["ps-cpu/0"]["flags"] and "B" in rows["ps-cpu/0"]["flags"]
    kproc.kthread_stop(loop)
    kproc.kthread_stop(parked)


def test_ps_table_names_kthreadd_and_kthreads(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "ps-table-me")
    text = _ps()
    assert f"kthreadd {rt.kthreadd_pid}" in text
    assert "ps-table-me" in text and "TASK_UNINTERRUPTIBLE" in text
    kproc.kthread_stop(task)


def test_ps_without_runtime_says_so():
    text = _ps()
    assert "no kproc runtime" in text or "runtime:" in text   # other users' runtimes aside


def test_ps_shows_a_workers_queue_current_work_and_executed(rt):
    from fns import work as wfuncs
    w = kproc.kthread_create_worker(0, "ps-worker")
    try:
        started, release = kproc.Completion(), kproc.Completion()
        kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.noop))
        kproc.kthread_flush_worker(w)
        kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.block, (started, release)))
        kproc.wait_for_completion(started)
        pending = [kproc.KthreadWork(wfuncs.noop) for _ in range(3)]
        for p in pending:
            kproc.kthread_queue_work(w, p)
        dwork = kproc.KthreadDelayedWork(wfuncs.noop)
        kproc.kthread_queue_delayed_work(w, dwork, 100)
        runtimes = [r for r in json.loads(_ps("--json")) if r["kthreadd"] == rt.kthreadd_pid]
        row = next(t for t in runtimes[0]["kthreads"] if t["name"] == "ps-worker")
        assert "W" in row["flags"]
        assert row["worker"]["queued"] == 3 and row["worker"]["delayed"] == 1
        assert row["worker"]["executed"] == 1
        assert row["worker"]["current"] == "fns.work.block"
        assert "[fns.work.block]" in _ps()
        kproc.complete(release)
        kproc.kthread_cancel_delayed_work_sync(dwork)
    finally:
        kproc.kthread_destroy_worker(w)


def test_every_subcommand_is_dispatched_from_main():
    from kproc._cli.main import build_parser
    parser = build_parser()
    for argv in (["ps"], ["bench", "--quick"], ["hotplug", "status"],
                 ["trace", "summary", "f.json"]):
        assert callable(parser.parse_args(argv).func), argv
