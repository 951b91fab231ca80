"""Trace events (SPEC §3 "Tracing"): the kernel's kthread tracepoints as Chrome trace JSON.

Enabled by ``start(trace="run.json")`` or ``KPROC_TRACE=run.json``; off by
default, and then every call site costs one attribute load (callers test
``_trace.ENABLED`` before calling anything here).

Events, with the kernel's names and fields (include/trace/events/sched.h):
``sched_kthread_stop`` (comm, pid), ``sched_kthread_stop_ret`` (ret),
``sched_kthread_work_queue_work`` (work, function, worker),
``sched_kthread_work_execute_start`` / ``_end`` (work, function), plus the
lifecycle instants ``kthread_create``, ``kthread_wake``, ``kthread_park``,
``kthread_unpark``, ``kthread_exit``.  Each lands on the track of the kthread
it is about (pid = tid = the kthread's real pid, named after it), so Perfetto
shows one track per kthread; a work's execution is a slice on its worker's
track, joined to the queueing by a flow arrow.

How: every process of the runtime buffers its events in memory and appends
them, one JSON array per line, to ``<path>.d/<pid>.jsonl`` when the buffer
fills, before a kthread exits, and at shutdown; the owner's ``shutdown()``
merges the files into ``path`` and removes the folder.  A kthread killed by
SIGKILL loses the events it had not written yet (at most BUFFER_EVENTS).
Timestamps are CLOCK_MONOTONIC, one clock for every process.

Paths (the trace usually goes to a shared folder such as ``/tmp``): the
events folder must be ours and writable by nobody else (made 0700, checked
through ``safefs``, never followed through a symlink); event files are
opened with ``O_NOFOLLOW`` inside it, and the merged file is written to a new
0600 temporary file (``O_EXCL``) renamed over ``path``, so a link or file
another user planted at ``path`` is replaced, never written through.
"""

from __future__ import annotations

import os
import time

from . import safefs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    # One Chrome trace event: JSON, as Perfetto reads it.
    Event = dict[str, Any]

__all__ = ["ENABLED", "check_path", "setup", "after_fork", "name_process", "lifecycle",
           "kthread_stop", "kthread_stop_ret", "work_queue_work", "work_execute_start",
           "work_execute_end", "flush", "merge"]

ENABLED = False
BUFFER_EVENTS = 4096

_dir: str | None = None
_buf: list[Event] = []
_pid = 0


def _us() -> float:
    return time.monotonic_ns() / 1000.0


def check_path(path: str) -> None:
    """Refuse a trace ``path`` whose events folder (``path.d``) exists and is not
    a folder of ours.  Context: the owner, in ``start()``.  Raises: PermissionError."""
    safefs.check_own_or_absent(os.fspath(path) + ".d")


def setup(role: str, path: str) -> None:
    """Enable tracing in this process, whose role in its runtime is ``role``, to ``path``.

    @role: ``Runtime.role.value`` ("owner", "kthreadd"): names this process's track.
    Context: the owner (at start) and kthreadd; kthreads inherit it by fork.
    """
    global ENABLED, _dir, _pid
    import json  # noqa: F401  loaded here, once: an untraced runtime never loads it
    _dir = safefs.own_dir(os.fspath(path) + ".d")
    _pid = os.getpid()
    _buf.clear()
    ENABLED = True
    name_process("kproc caller" if role == "owner" else role)


def after_fork() -> None:
    """In a new kthread: drop the buffer inherited from kthreadd, adopt our pid."""
    global _pid
    if ENABLED:
        _buf.clear()
        _pid = os.getpid()


def name_process(comm: str, pid: int | None = None) -> None:
    """Metadata naming a track: process and thread ``pid`` (default: ours) are ``comm``."""
    pid = pid or _pid
    for kind in ("process_name", "thread_name"):
        _buf.append({"ph": "M", "name": kind, "pid": pid, "tid": pid,
                     "args": {"name": comm}})


def _emit(event: Event) -> None:
    _buf.append(event)
    if len(_buf) >= BUFFER_EVENTS:
        flush()


def _instant(name: str, pid: int, args: dict[str, object]) -> None:
    _emit({"name": name, "cat": "kthread", "ph": "i", "s": "t", "ts": _us(),
           "pid": pid, "tid": pid, "args": args})


def lifecycle(event: str, pid: int, comm: str, /, **args: object) -> None:
    """A lifecycle instant ``kthread_<event>`` on kthread ``pid``'s track.

    @event: create, wake, park, unpark or exit.  A create also names the track.
    """
    if event == "create":
        name_process(comm, pid)
    _instant("kthread_" + event, pid, dict(args, comm=comm, pid=pid))


def kthread_stop(pid: int, comm: str) -> None:
    """The kernel's ``sched_kthread_stop`` (comm, pid), on the stopped kthread's track."""
    _instant("sched_kthread_stop", pid, {"comm": comm, "pid": pid})


def kthread_stop_ret(ret: int, pid: int = 0) -> None:
    """The kernel's ``sched_kthread_stop_ret`` (ret), on the stopped kthread's track."""
    _instant("sched_kthread_stop_ret", pid or _pid, {"ret": ret})


def work_queue_work(worker_pid: int, worker_comm: str, work_id: int, func_name: str,
                    flow_id: int) -> None:
    """The kernel's ``sched_kthread_work_queue_work``, on the queueing process's track,
    with the start of the flow that ends at the execution."""
    ts = _us()
    args = {"work": work_id, "function": func_name, "worker": worker_pid,
            "worker_comm": worker_comm}
    _emit({"name": "sched_kthread_work_queue_work", "cat": "kthread_work", "ph": "X",
           "ts": ts, "dur": 1.0, "pid": _pid, "tid": _pid, "args": args})
    _emit({"name": "work", "cat": "kthread_work", "ph": "s", "id": flow_id, "ts": ts,
           "pid": _pid, "tid": _pid})


def work_execute_start(work_id: int, func_name: str, flow_id: int) -> None:
    """``sched_kthread_work_execute_start``: opens the work's slice on the worker's track."""
    ts = _us()
    args = {"work": work_id, "function": func_name}
    _emit({"name": func_name, "cat": "kthread_work", "ph": "B", "ts": ts, "pid": _pid,
           "tid": _pid, "args": args})
    _emit({"name": "sched_kthread_work_execute_start", "cat": "kthread_work", "ph": "i",
           "s": "t", "ts": ts, "pid": _pid, "tid": _pid, "args": args})
    if flow_id:
        _emit({"name": "work", "cat": "kthread_work", "ph": "f", "bp": "e", "id": flow_id,
               "ts": ts, "pid": _pid, "tid": _pid})


def work_execute_end(work_id: int, func_name: str) -> None:
    """``sched_kthread_work_execute_end``: closes the work's slice."""
    ts = _us()
    args = {"work": work_id, "function": func_name}
    _emit({"name": "sched_kthread_work_execute_end", "cat": "kthread_work", "ph": "i",
           "s": "t", "ts": ts, "pid": _pid, "tid": _pid, "args": args})
    _emit({"name": func_name, "cat": "kthread_work", "ph": "E", "ts": ts, "pid": _pid,
           "tid": _pid})


def flush() -> None:
    """Append this process's buffered events to its file.  Context: any; never raises."""
    if not _buf or _dir is None:
        return
    import json     # loaded by setup(): kthreads inherit it
    # One JSON array per flush: one call into the C encoder for the whole buffer.
    lines = json.dumps(_buf, separators=(",", ":")) + "\n"
    _buf.clear()
    try:
        fd = os.open(os.path.join(_dir, f"{os.getpid()}.jsonl"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def merge(path: str) -> int:
    """Owner, at shutdown: merge every process's events into ``path``; disable tracing.

    Return: the number of events written.
    """
    global ENABLED, _dir
    import json
    import tempfile
    flush()
    d = os.fspath(path) + ".d"
    events: list[Event] = []
    try:
        safefs.check_own_or_absent(d)
        names = sorted(os.listdir(d))
    except (FileNotFoundError, PermissionError):
        names = []                  # gone, or swapped for someone else's: not read
    for name in names:
        full = os.path.join(d, name)
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        events.extend(json.loads(line))
                    except ValueError:
                        pass        # a line torn by a killed process
        os.unlink(full)
    try:
        os.rmdir(d)
    except OSError:
        pass
    meta = _dedup_meta([e for e in events if e.get("ph") == "M"])
    rest = sorted((e for e in events if e.get("ph") != "M"), key=lambda e: e["ts"])
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=base + ".", suffix=".tmp", dir=folder)  # O_EXCL, 0600
    try:
        with open(fd, "w") as f:
            json.dump({"traceEvents": meta + rest, "displayTimeUnit": "ns"}, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    ENABLED, _dir = False, None
    return len(meta) + len(rest)


def _dedup_meta(meta: list[Event]) -> list[Event]:
    """Keep the last name given to each (pid, kind): a kthread renames kthreadd's fork."""
    last: dict[tuple[object, object, object], Event] = {}
    for e in meta:
        last[(e["pid"], e["tid"], e["name"])] = e
    return list(last.values())
