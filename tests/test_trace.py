"""Trace events: Chrome trace JSON with the kernel's tracepoints (SPEC §3 "Tracing")."""

import json
import os
from collections import defaultdict

import pytest

import kproc
from fns import kthread as kfuncs
from fns import work as wfuncs
from kproc._core import trace as _trace
from helpers import kproc_shm_entries, wait_until


def _traced_run(path):
    """Start a traced runtime, exercise kthreads and a worker, shut down.

    Return: facts to check against (pids, names, stop result).
    """
    rt = kproc.start(trace=str(path))
    try:
        started = kproc.Completion()
        loop = kproc.kthread_run(kfuncs.park_loop, (started,), "tr-loop")
        kproc.wait_for_completion(started)
        assert kproc.kthread_park(loop) == 0
        kproc.kthread_unpark(loop)
        never = kproc.kthread_create(kfuncs.ret_value, 3, "tr-never")
        w = kproc.kthread_create_worker(0, "tr-worker")
        works = [kproc.KthreadWork(wfuncs.noop) for _ in range(3)]
        for work in works:
            kproc.kthread_queue_work(w, work)
        kproc.kthread_flush_worker(w)
        facts = {"loop": loop.pid, "never": never.pid, "worker": w.task.pid,
                 "caller": os.getpid(), "kthreadd": rt.kthreadd_pid,
                 "works": len(works)}
        facts["loop_ret"] = kproc.kthread_stop(loop)
        facts["never_ret"] = kproc.kthread_stop(never)
        kproc.kthread_destroy_worker(w)
    finally:
        rt.shutdown()
    return facts


def _load(path):
    with open(path) as f:
        doc = json.load(f)
    assert doc["displayTimeUnit"] == "ns"
    return doc["traceEvents"]


def test_trace_file_has_one_named_track_per_kthread(tmp_path):
    path = tmp_path / "run.json"
    facts = _traced_run(path)
    events = _load(path)
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names[facts["loop"]] == "tr-loop"
    assert names[facts["never"]] == "tr-never"
    assert names[facts["worker"]] == "tr-worker"
    assert names[facts["kthreadd"]] == "kthreadd"
    assert facts["caller"] in names
    meta = [(e["pid"], e["name"]) for e in events if e["ph"] == "M"]
    assert len(meta) == len(set(meta))              # one name per track
    assert not os.path.exists(str(path) + ".d")     # temporaries removed


def test_stop_events_carry_the_kernel_fields(tmp_path):
    path = tmp_path / "run.json"
    facts = _traced_run(path)
    events = _load(path)
    for who, ret_key in (("loop", "loop_ret"), ("never", "never_ret")):
        pid = facts[who]
        stops = [e for e in events if e["name"] == "sched_kthread_stop" and e["pid"] == pid]
        rets = [e for e in events if e["name"] == "sched_kthread_stop_ret" and e["pid"] == pid]
        assert len(stops) == 1 and len(rets) == 1
        assert stops[0]["args"]["pid"] == pid and stops[0]["args"]["comm"] == "tr-" + who
        assert rets[0]["args"]["ret"] == facts[ret_key]
        assert stops[0]["ts"] <= rets[0]["ts"]
    assert facts["never_ret"] == -4                 # -EINTR: never woken
    assert facts["loop_ret"] == 3


def test_lifecycle_instants(tmp_path):
    path = tmp_path / "run.json"
    facts = _traced_run(path)
    events = _load(path)
    by_pid = defaultdict(list)
    for e in events:
        if e.get("cat") == "kthread":
            by_pid[e["pid"]].append(e["name"])
    loop = by_pid[facts["loop"]]
    for name in ("kthread_create", "kthread_wake", "kthread_park", "kthread_unpark",
                 "sched_kthread_stop", "kthread_exit", "sched_kthread_stop_ret"):
        assert name in loop, (name, loop)
    assert loop.index("kthread_park") < loop.index("kthread_unpark") < \
        loop.index("kthread_exit")
    assert "kthread_wake" not in by_pid[facts["never"]]
    assert all(e["ph"] == "i" and e["s"] == "t" for e in events if e.get("cat") == "kthread")


def test_work_events_slices_and_flows(tmp_path):
    path = tmp_path / "run.json"
    facts = _traced_run(path)
    events = _load(path)
    wpid = facts["worker"]
    queued = [e for e in events if e["name"] == "sched_kthread_work_queue_work"
              and e["pid"] == facts["caller"]]
    assert len(queued) >= facts["works"]
    assert all(e["args"]["worker"] == wpid and e["args"]["function"] == "noop"
               for e in queued[:facts["works"]])
    starts = [e for e in events if e["name"] == "sched_kthread_work_execute_start"]
    ends = [e for e in events if e["name"] == "sched_kthread_work_execute_end"]
    assert len(starts) == len(ends) == facts["works"]
    assert {e["pid"] for e in starts + ends} == {wpid}
    assert {e["args"]["work"] for e in starts} == {e["args"]["work"] for e in queued}
    depth = 0
    for e in events:                                  # B/E balanced on the worker track
        if e["pid"] == wpid and e["ph"] in "BE":
            depth += 1 if e["ph"] == "B" else -1
            assert depth in (0, 1)
    assert depth == 0
    flows_s = {e["id"]: e for e in events if e["ph"] == "s"}
    flows_f = {e["id"]: e for e in events if e["ph"] == "f"}
    assert set(flows_f) <= set(flows_s) and len(flows_f) == facts["works"]
    for fid, f in flows_f.items():
        assert f["pid"] == wpid and f["bp"] == "e"
        assert flows_s[fid]["ts"] <= f["ts"]
    ts = [e["ts"] for e in events if "ts" in e]
    assert ts == sorted(ts)


def test_kproc_trace_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "env.json"
    monkeypatch.setenv("KPROC_TRACE", str(path))
    rt = kproc.start()
    try:
        t = kproc.kthread_run(kfuncs.ret_value, 1, "tr-env")
        wait_until(lambda: kproc.task_state(t) == kproc.TASK_DEAD)
        kproc.kthread_stop(t)
    finally:
        rt.shutdown()
    assert any(e["name"] == "kthread_exit" for e in _load(path))


def test_tracing_is_off_by_default(rt, tmp_path, monkeypatch):
    assert rt.trace is None and not _trace.ENABLED
    t = kproc.kthread_run(kfuncs.ret_value, 1, "tr-off")
    wait_until(lambda: kproc.task_state(t) == kproc.TASK_DEAD)
    kproc.kthread_stop(t)
    assert not _trace._buf


@pytest.mark.timeout(60)
def test_trace_summary_cli(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "run.json"
    facts = _traced_run(path)
    out = subprocess.run([sys.executable, "-m", "kproc", "trace", "summary", str(path),
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    tracks = {t["pid"]: t for t in summary["tracks"]}
    assert tracks[facts["worker"]]["name"] == "tr-worker"
    assert tracks[facts["worker"]]["works"] == facts["works"]
    assert summary["works"]["count"] == facts["works"]
    text = subprocess.run([sys.executable, "-m", "kproc", "trace", "summary", str(path)],
                          capture_output=True, text=True, timeout=30).stdout
    assert "tr-worker" in text


def test_work_queued_by_a_kthread_and_delayed_work_are_traced(tmp_path):
    path = tmp_path / "run.json"
    rt = kproc.start(trace=str(path))
    try:
        w = kproc.kthread_create_worker(0, "tr-w2")
        work = kproc.KthreadWork(wfuncs.noop)
        q = kproc.kthread_run(wfuncs.queue_from_kthread, (w, work), "tr-queuer")
        wait_until(lambda: kproc.task_state(q) == kproc.TASK_DEAD)
        assert kproc.kthread_stop(q) == 1
        dwork = kproc.KthreadDelayedWork(wfuncs.noop)
        assert kproc.kthread_queue_delayed_work(w, dwork, 0.005)
        kproc.kthread_flush_work(work)
        wait_until(lambda: w.executed == 2)
        wpid, qpid = w.task.pid, q.pid
        kproc.kthread_destroy_worker(w)
    finally:
        rt.shutdown()
    events = _load(path)
    queued = [e for e in events if e["name"] == "sched_kthread_work_queue_work"]
    # On the track of the process that queued: the kthread for the plain work; for
    # the delayed work, whichever process fired its timer (as kthread_insert_work
    # emits it from the kernel's timer callback).
    assert len(queued) == 2 and queued[0]["pid"] == qpid
    assert queued[1]["pid"] in (wpid, os.getpid(), rt.kthreadd_pid)
    assert all(e["args"]["worker"] == wpid for e in queued)
    starts = [e for e in events if e["name"] == "sched_kthread_work_execute_start"]
    assert len(starts) == 2 and {e["pid"] for e in starts} == {wpid}
    assert {e["args"]["work"] for e in starts} == {e["args"]["work"] for e in queued}


def test_bad_trace_paths_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(TypeError):
        kproc.start(trace=3)
    with pytest.raises(ValueError, match="does not exist"):
        kproc.start(trace=str(tmp_path / "missing" / "run.json"))
    with pytest.raises(ValueError, match="folder"):
        kproc.start(trace=str(tmp_path))
    assert not (tmp_path / "missing").exists()
    assert kproc_shm_entries({os.getpid()}) == set()


def test_trace_summary_cli_refuses_a_file_that_is_not_a_trace(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    out = subprocess.run([sys.executable, "-m", "kproc", "trace", "summary", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "not a Chrome trace-event JSON" in out.stderr
    out = subprocess.run([sys.executable, "-m", "kproc", "trace", "summary",
                          str(tmp_path / "none.json")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "none.json" in out.stderr
