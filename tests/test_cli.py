"""The command line (SPEC §6): `kproc ps`, the dispatch of every subcommand,
--version, a closed pipe, and what --help and help() show."""

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


def test_version_is_the_packages():
    out = subprocess.run([sys.executable, "-m", "kproc", "--version"], capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"kproc {kproc.__version__} (C extension ")
    assert kproc.__version__.count(".") == 2


def test_a_closed_pipe_ends_the_command_quietly(rt):
    """``kproc ps --json | head -1``: no BrokenPipeError traceback, and the
    status a tool killed by SIGPIPE reports (128 + 13), as ``head``-ed tools do."""
    kproc.kthread_create(kfuncs.ret_value, 0, "ps-pipe")
    for args in (["ps", "--json"], ["ps"]):
        proc = subprocess.Popen([sys.executable, "-m", "kproc", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()                   # the reader went away before any output
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 141, err
        assert err == b"", err.decode()


def test_task_states_print_their_names(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "named-state")
    state = kproc.task_state(task)
    assert str(state) == f"{state}" == "TASK_UNINTERRUPTIBLE"
    assert f"{kproc.TASK_PARKED:>12}" == " TASK_PARKED" and f"{kproc.TASK_PARKED:#x}" == "0x40"
    assert state == 2 and kproc.TASK_PARKED == 64        # still the kernel's values
    assert "TASK_UNINTERRUPTIBLE" in repr(task)
    kproc.kthread_stop(task)


def _help_texts():
    """Every --help the command prints."""
    from kproc._cli.main import build_parser
    parser = build_parser()
    yield "kproc --help", parser.format_help()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        yield f"kproc {name} --help", p.format_help()


def test_no_internal_references_in_user_facing_text():
    """--help, and what help() shows of kproc and of every public name, say nothing
    of the project's own papers (specification sections, issue numbers)."""
    import pydoc
    import re
    internal = re.compile(r"SPEC|§|later issues?|issue #?\d+")
    texts = list(_help_texts())
    texts.append(("help(kproc)", pydoc.render_doc(kproc, renderer=pydoc.plaintext)))
    for name in kproc.__all__:
        obj = getattr(kproc, name)
        if callable(obj):
            texts.append((f"help(kproc.{name})",
                          pydoc.render_doc(obj, renderer=pydoc.plaintext)))
    found = [(where, line.strip()) for where, text in texts for line in text.splitlines()
             if internal.search(line)]
    assert found == []
