"""A hypothesis fuzz of every public function with bad arguments.

Each call gets one or more arguments replaced by a bad value of the kind that
parameter takes (a CPU, a mask, a duration, a name format, a handle...).
*Clear* means: it raises TypeError, ValueError or OSError (KthreadError is
one; ``pickle.UnpicklingError`` for handles), within 2 s, and the message names
the parameter (by its name, or the kproc type it must be).  A bad value that
is accepted, another exception, or a message naming nothing counts as an
error; afterwards a sanity workload (create/stop, a work queued and flushed, a
completion) must still run.  The runtime sits on a fake sysfs tree, so no
value can reach real CPU hotplug.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kproc

from . import fns
from .harness import Result, call_with_deadline

BAD = {
    "task": [None, 1234, "t", object(), 1.0, [1]],
    "cpu": [-1, 10 ** 6, 2 ** 200, -(2 ** 200), 1.5, "0", None, True, math.nan],
    # kthread_set_per_cpu(): a negative CPU clears the flag (kthread.c), so is good
    "cpu+": [10 ** 6, 2 ** 200, 1.5, "0", None, True, math.nan],
    "cpus": [[], [10 ** 6], "01", 5, None, [None], [-1], itertools.repeat(0), [0.5]],
    "seconds": [-1, math.nan, 1e300, 2 ** 2000, "1", None, -math.inf, b"1", True],
    "delay": [-1, math.nan, 1e300, 2 ** 2000, "1", None, math.inf, True],
    "namefmt": [5, None, "%d", "%2147483648d", "a" * 5000, "x\0y", b"x", "%*d", "%(k)s"],
    # kthread_create_on_cpu() formats the name with the CPU: one %d/%u is right
    "namefmt1": [5, None, "%d%d", "%2147483648d", "a" * 5000, "x\0y", b"x", "%(k)s"],
    "node": [-2, 10 ** 6, 2 ** 70, "0", None, 1.0],
    "fn": [None, 5, lambda d: 0, object(), "fns.ret_data"],
    "fn?": [5, lambda d: 0, object(), "fns.ret_data"],       # None is allowed there
    "worker": [None, 5, "w", object()],
    "work": [None, 5, "w", object()],
    "c": [None, 5, "c", object(), 1.0],
    "flags": [-1, 2 ** 40, "0", None, 1.5],
    "state": [12345, -1, "x", None, 2 ** 40],
    "int": [2 ** 200, "0", None, 1.5, object()],
    "hpstate": [2 ** 200, "0", None, 1.5, object()],
    "str": [5, None, b"x", 1.5, object(), ["a"]],
}
# kthread_probe_data() "may be called on any task" (kthread.c): it answers None.
MAY_ACCEPT = {"kthread_probe_data"}
# Words a message may name a parameter by, beside its own name.
ALIASES = {"task": ["kproc.Task", "task"], "c": ["kproc.Completion", "completion"],
           "cpus": ["cpus", "CPU"], "cpu": ["cpu", "CPU"], "seconds": ["timeout", "seconds"],
           "ms": ["msecs", "ms"], "worker": ["worker", "KthreadWorker"],
           "work": ["work", "KthreadWork"], "dwork": ["work", "KthreadDelayedWork"],
           "fn": ["callable", "threadfn", "func", "function"], "threadfn": ["threadfn",
           "callable", "function"], "namefmt": ["name", "namefmt"], "func": ["func",
           "callable", "function"], "state": ["state"], "flags": ["flags"],
           "node": ["node"], "delay": ["delay"], "timeout": ["timeout"],
           "possible": ["possible"], "max_kthreads": ["max_kthreads"],
           "max_works": ["max_works"], "backend": ["backend"], "sysfs_root": ["sysfs_root"],
           "preload": ["preload"], "trace": ["trace"], "name": ["name"],
           "startup": ["startup", "callable"], "teardown": ["teardown", "callable"],
           "thread_comm": ["thread_comm", "comm"], "ht": ["SmpHotplugThread", "ht"],
           "result": ["result"], "code": ["code"], "comp": ["Completion", "comp"]}


def _table(good: dict[str, Any]) -> list[tuple[str, Callable[..., Any], list[tuple[str, str]]]]:
    """(name, function, [(parameter, kind)]); good values come from ``good``."""
    k = kproc
    return [
        ("kthread_create", lambda fn, namefmt: k.kthread_create(fn, 0, namefmt),
         [("fn", "fn"), ("namefmt", "namefmt")]),
        ("kthread_create_on_node", lambda node, namefmt: k.kthread_create_on_node(
            fns.ret_data, 0, node, namefmt), [("node", "node"), ("namefmt", "namefmt")]),
        ("kthread_create_on_cpu", lambda cpu, namefmt: k.kthread_create_on_cpu(
            fns.ret_data, 0, cpu, namefmt), [("cpu", "cpu"), ("namefmt", "namefmt1")]),
        ("kthread_run", lambda fn: k.kthread_run(fn, 0, "fz"), [("fn", "fn")]),
        ("wake_up_process", k.wake_up_process, [("task", "task")]),
        ("kthread_bind", k.kthread_bind, [("task", "task"), ("cpu", "cpu")]),
        ("kthread_bind_mask", k.kthread_bind_mask, [("task", "task"), ("cpus", "cpus")]),
        ("kthread_affine_preferred", k.kthread_affine_preferred,
         [("task", "task"), ("cpus", "cpus")]),
        ("kthread_stop", k.kthread_stop, [("task", "task")]),
        ("kthread_stop_put", k.kthread_stop_put, [("task", "task")]),
        ("kthread_park", k.kthread_park, [("task", "task")]),
        ("kthread_unpark", k.kthread_unpark, [("task", "task")]),
        ("kthread_set_per_cpu", k.kthread_set_per_cpu, [("task", "task"), ("cpu", "cpu+")]),
        ("kthread_is_per_cpu", k.kthread_is_per_cpu, [("task", "task")]),
        ("kthread_data", k.kthread_data, [("task", "task")]),
        ("kthread_probe_data", k.kthread_probe_data, [("task", "task")]),
        ("kthread_func", k.kthread_func, [("task", "task")]),
        ("get_kthread_comm", k.get_kthread_comm, [("task", "task")]),
        ("get_task_struct", k.get_task_struct, [("task", "task")]),
        ("put_task_struct", k.put_task_struct, [("task", "task")]),
        ("task_state", k.task_state, [("task", "task")]),
        ("schedule_timeout", k.schedule_timeout, [("seconds", "seconds")]),
        ("schedule_timeout_interruptible", k.schedule_timeout_interruptible,
         [("seconds", "seconds")]),
        ("msleep", k.msleep, [("ms", "seconds")]),
        ("msleep_interruptible", k.msleep_interruptible, [("ms", "seconds")]),
        ("set_current_state", k.set_current_state, [("state", "state")]),
        ("init_completion", k.init_completion, [("c", "c")]),
        ("reinit_completion", k.reinit_completion, [("c", "c")]),
        ("complete", k.complete, [("c", "c")]),
        ("complete_all", k.complete_all, [("c", "c")]),
        ("wait_for_completion", k.wait_for_completion, [("c", "c")]),
        ("wait_for_completion_timeout", k.wait_for_completion_timeout,
         [("c", "c"), ("timeout", "seconds")]),
        ("wait_for_completion_interruptible", k.wait_for_completion_interruptible,
         [("c", "c")]),
        ("wait_for_completion_killable", k.wait_for_completion_killable, [("c", "c")]),
        ("try_wait_for_completion", k.try_wait_for_completion, [("c", "c")]),
        ("completion_done", k.completion_done, [("c", "c")]),
        ("KthreadWork", k.KthreadWork, [("func", "fn")]),
        ("KthreadDelayedWork", k.KthreadDelayedWork, [("func", "fn")]),
        ("kthread_create_worker", lambda flags, namefmt: k.kthread_create_worker(
            flags, namefmt), [("flags", "flags"), ("namefmt", "namefmt")]),
        ("kthread_create_worker_on_node", lambda flags, node: k.kthread_create_worker_on_node(
            flags, node, "fzw"), [("flags", "flags"), ("node", "node")]),
        ("kthread_create_worker_on_cpu", lambda cpu, flags: k.kthread_create_worker_on_cpu(
            cpu, flags, "fzw/%u"), [("cpu", "cpu"), ("flags", "flags")]),
        ("kthread_destroy_worker", k.kthread_destroy_worker, [("worker", "worker")]),
        ("kthread_init_work", k.kthread_init_work, [("work", "work"), ("func", "fn")]),
        ("kthread_queue_work", k.kthread_queue_work, [("worker", "worker"), ("work", "work")]),
        ("kthread_queue_delayed_work", k.kthread_queue_delayed_work,
         [("worker", "worker"), ("dwork", "work"), ("delay", "delay")]),
        ("kthread_mod_delayed_work", k.kthread_mod_delayed_work,
         [("worker", "worker"), ("dwork", "work"), ("delay", "delay")]),
        ("kthread_flush_work", k.kthread_flush_work, [("work", "work")]),
        ("kthread_flush_worker", k.kthread_flush_worker, [("worker", "worker")]),
        ("kthread_cancel_work_sync", k.kthread_cancel_work_sync, [("work", "work")]),
        ("kthread_cancel_delayed_work_sync", k.kthread_cancel_delayed_work_sync,
         [("dwork", "work")]),
        ("freeze_kthreads", k.freeze_kthreads, [("timeout", "seconds")]),
        ("cpu_to_node", k.cpu_to_node, [("cpu", "cpu")]),
        ("cpumask_of_node", k.cpumask_of_node, [("node", "node")]),
        ("cpu_down", k.cpu_down, [("cpu", "cpu")]),
        ("cpu_up", k.cpu_up, [("cpu", "cpu")]),
        ("cpuhp_setup_state", lambda state, name, startup: k.cpuhp_setup_state(
            state, name, startup, None),
         [("state", "hpstate"), ("name", "str"), ("startup", "fn?")]),
        ("cpuhp_remove_state", k.cpuhp_remove_state, [("state", "int")]),
        ("SmpHotplugThread", lambda thread_comm, fn: k.SmpHotplugThread(
            fn, fns.work_noop, thread_comm), [("thread_comm", "namefmt"), ("fn", "fn")]),
        ("smpboot_register_percpu_thread", k.smpboot_register_percpu_thread,
         [("ht", "worker")]),
        ("fake_sysfs", lambda possible: k.fake_sysfs(good["tree2"], possible=possible),
         [("possible", "cpus")]),
        ("start", lambda max_kthreads: k.start(max_kthreads=max_kthreads),
         [("max_kthreads", "int")]),
        ("start(backend)", lambda backend: k.start(backend=backend), [("backend", "str")]),
    ]


def _good(kind: str, good: dict[str, Any]) -> Any:
    return {"task": good["task"], "cpu": 0, "cpu+": 0, "cpus": [0], "seconds": 0, "delay": 0,
            "namefmt": "fz", "namefmt1": "fz/%u", "node": 0, "fn": fns.ret_data,
            "fn?": None, "worker": good["worker"],
            "work": good["dwork"], "c": good["c"], "flags": 0, "state": 0, "int": 1,
            "hpstate": kproc.CPUHP_AP_ONLINE_DYN,
            "str": "fz:online"}[kind]


def _clear(exc: BaseException, params: list[str]) -> bool:
    import pickle
    if not isinstance(exc, (TypeError, ValueError, OSError, pickle.UnpicklingError)):
        return False
    text = str(exc)
    return any(word in text for p in params for word in ALIASES.get(p, [p]))


def fuzz(r: Result, examples: int) -> None:
    tmp = tempfile.mkdtemp(prefix="kproc-chaos-")
    tree = kproc.fake_sysfs(os.path.join(tmp, "tree"), possible=2)
    kproc.start(backend=r.backend, sysfs_root=tree, max_kthreads=256)
    good: dict[str, Any] = {"tree2": os.path.join(tmp, "tree2"), "c": kproc.Completion()}
    good["task"] = kproc.kthread_create(fns.ret_data, 0, "fz-target")
    good["worker"] = kproc.kthread_create_worker(0, "fz-worker")
    good["dwork"] = kproc.KthreadDelayedWork(fns.work_noop)
    table = _table(good)
    counts = {"calls": 0, "unclear": 0, "accepted": 0}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data: st.DataObject) -> None:
        name, fn, params = data.draw(st.sampled_from(table))
        bad_mask = data.draw(st.lists(st.booleans(), min_size=len(params),
                                      max_size=len(params)).filter(any))
        args, bad_params = [], []
        for (pname, kind), is_bad in zip(params, bad_mask):
            if is_bad:
                args.append(data.draw(st.sampled_from(BAD[kind])))
                bad_params.append(pname)
            else:
                args.append(_good(kind, good))
        counts["calls"] += 1
        r.trials += 1
        ok, value, _ = call_with_deadline(lambda: fn(*args))
        if not ok:
            r.hangs += 1
            r.note(f"{name}{tuple(map(_short, args))} hung")
        elif not isinstance(value, BaseException):
            if not name.startswith(("start", "fake_sysfs")) and name not in MAY_ACCEPT:
                counts["accepted"] += 1
                r.note(f"{name}{tuple(map(_short, args))} accepted it: {_short(value)}")
            else:
                kproc.shutdown() if name.startswith("start") else None
        elif not _clear(value, bad_params):
            counts["unclear"] += 1
            r.note(f"{name}{tuple(map(_short, args))}: {type(value).__name__}: "
                   f"{str(value)[:120]}")
    try:
        one()
    finally:
        r.errors += counts["unclear"] + counts["accepted"]
        r.extra.update(unclear=counts["unclear"], accepted=counts["accepted"],
                       harmed=int(not _sanity(r)))
        kproc.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 40 else text[:37] + "..."


def _sanity(r: Result) -> bool:
    """After the fuzz: the runtime still does its job (or a new one does)."""
    ok, value, _ = call_with_deadline(lambda: fns.sane_workload(r.backend, "fz"), 10)
    if not (ok and value is True):
        r.errors += 1
        r.note(f"sanity workload after the fuzz failed: {value!r}")
        return False
    return True
