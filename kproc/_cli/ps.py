"""``kproc ps``: kthreadd and its kthreads for every runtime of this user.

Runtimes are found by their kthreadd processes (comm ``kthreadd``, started
with ``kproc._kthread.kthreadd``, same user).  Each arena is mapped *read-only* from
``/proc/<kthreadd>/fd/<N>`` (the memfd is not in any namespace, and only the
same user, or root, may open it), and read without taking any lock: the
table is a snapshot, possibly torn for a kthread changing state meanwhile.
"""

from __future__ import annotations

import mmap
import os
import pickletools
import re
import struct
import time

import psutil

from .._core import layout as L
from .._core.arena import ArenaParams, marker_slots
from .._core.topology import format_cpulist
from .._sched.task import TASK_STATES
from .output import print_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace, _SubParsersAction
    from typing import TypedDict

    class WorkerCounters(TypedDict):
        """A worker's counters, as ``kproc ps`` shows them beside its kthread."""

        queued: int
        delayed: int
        executed: int
        errors: int
        current: str | None

    class TaskRow(TypedDict):
        """One kthread of a snapshot."""

        pid: int
        cpu: int | None
        affinity: list[int] | None
        state: str
        flags: str
        name: str
        slot: str
        bound_cpu: int
        worker: WorkerCounters | None

    class RuntimeSnapshot(TypedDict):
        """One runtime, as snapshot() reads it and ``--json`` prints it."""

        kthreadd: int
        owner: int
        backend: str
        max_kthreads: int
        kthreads: list[TaskRow]

__all__ = ["find_runtimes", "snapshot", "format_table", "add_parser", "run"]

FLAG_NAMES = [(L.KF_IS_PER_CPU, "P"), (L.KF_SHOULD_STOP, "S"), (L.KF_SHOULD_PARK, "K"),
              (L.KF_NO_SETAFFINITY, "B"), (L.KF_PREFERRED, "A"), (L.KF_FREEZABLE, "F"),
              (L.KF_WORKER, "W"), (L.KF_EXITING, "X")]
SLOT_NAMES = {L.SLOT_CREATING: "creating", L.SLOT_LIVE: "live", L.SLOT_EXITING: "exiting",
              L.SLOT_DEAD: "dead"}


def find_runtimes() -> list[tuple[int, int]]:
    """kthreadd processes of kproc runtimes owned by this user: [(pid, arena fd)]."""
    uid = os.getuid()
    found: list[tuple[int, int]] = []
    for proc in psutil.process_iter(["name", "cmdline", "uids"]):
        info = proc.info
        if info["name"] != "kthreadd" or not info["cmdline"]:
            continue
        if uid != 0 and info["uids"] and info["uids"].real != uid:
            continue
        cmd = " ".join(info["cmdline"])
        m = re.search(r"--arena=(\d+)", cmd)
        if "kproc._kthread.kthreadd" in cmd and m:
            found.append((proc.pid, int(m.group(1))))
    return found


def _map(pid: int, fd: int) -> mmap.mmap:
    path = f"/proc/{pid}/fd/{fd}"
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ)


def snapshot(pid: int, fd: int) -> RuntimeSnapshot:
    """Read one runtime: a dict with kthreadd's pid and one dict per kthread."""
    buf = _map(pid, fd)
    try:
        H, T = L.HEADER, L.TASK
        if L.unpack_field(buf, 0, H, "magic") != L.MAGIC:
            raise ValueError(f"process {pid} holds no kproc arena at fd {fd}")
        if L.unpack_field(buf, 0, H, "layout_version") != L.LAYOUT_VERSION:
            raise ValueError(f"process {pid} runs a kproc of another layout version")
        n = L.unpack_field(buf, 0, H, "max_kthreads")
        params = ArenaParams(n, L.unpack_field(buf, 0, H, "max_completions"),
                             L.unpack_field(buf, 0, H, "max_works") - marker_slots(n))
        backend = {1: "futex", 2: "posix"}.get(L.unpack_field(buf, 0, H, "backend"), "?")
        workers = _workers(buf, params)
        tasks: list[TaskRow] = []
        for idx in range(n):
            base = params.tasks + idx * T.size
            slot = L.unpack_field(buf, base, T, "slot")
            if slot not in (L.SLOT_LIVE, L.SLOT_CREATING):
                continue
            worker = workers.get((idx + 1, L.unpack_field(buf, base, T, "gen")))
            tasks.append(_task_row(buf, params, idx, base, slot, worker))
        return {"kthreadd": pid, "owner": L.unpack_field(buf, 0, H, "owner_pid"),
                "backend": backend, "max_kthreads": n, "kthreads": tasks}
    finally:
        buf.close()


def _task_row(buf: mmap.mmap, params: ArenaParams, idx: int, base: int, slot: int,
              worker: WorkerCounters | None) -> TaskRow:
    T = L.TASK
    pid = L.unpack_field(buf, base, T, "pid")
    flags = L.unpack_field(buf, base, T, "flags")
    state = L.unpack_field(buf, base, T, "state")
    name_len = L.unpack_field(buf, base, T, "name_len")
    blob = params.blobs + idx * L.BLOB_SIZE
    name = bytes(buf[blob:blob + name_len]).decode("utf-8", "replace")
    cpu_now: int | None = None
    affinity: list[int] | None = None
    if pid > 0:
        try:
            proc = psutil.Process(pid)
            cpu_now = proc.cpu_num()
            affinity = sorted(proc.cpu_affinity())
        except (psutil.Error, OSError):
            pass
    return {
        "pid": pid, "cpu": cpu_now, "affinity": affinity,
        "state": getattr(TASK_STATES.get(state), "name", hex(state)),
        "flags": "".join(ch for bit, ch in FLAG_NAMES if flags & bit) or "-",
        "name": name, "slot": SLOT_NAMES.get(slot, str(slot)),
        "bound_cpu": L.unpack_field(buf, base, T, "cpu"), "worker": worker,
    }


def _workers(buf: mmap.mmap, params: ArenaParams) -> dict[tuple[int, int], WorkerCounters]:
    """{(task index + 1, task gen): worker counters} for every worker with a kthread."""
    K, W = L.WORKER, L.WORK
    out: dict[tuple[int, int], WorkerCounters] = {}
    now = time.monotonic_ns()
    for idx in range(params.max_kthreads):
        base = params.workers + idx * L.WORKER.stride
        if not L.unpack_field(buf, base, K, "inuse"):
            continue
        task = L.unpack_field(buf, base, K, "task")
        if not task:
            continue
        due = 0                     # expired timers count as queued (see _delayed)
        t = L.unpack_field(buf, base, K, "thead")
        while t and due <= params.max_works:
            wbase = params.works + (t - 1) * L.WORK.stride
            if L.unpack_field(buf, wbase, W, "expires") > now:
                break
            due += 1
            t = L.unpack_field(buf, wbase, W, "next")
        cur = L.unpack_field(buf, base, K, "current")
        out[(task, L.unpack_field(buf, base, K, "task_gen"))] = {
            "queued": L.unpack_field(buf, base, K, "depth") + due,
            "delayed": L.unpack_field(buf, base, K, "ndelayed") - due,
            "executed": L.unpack_field(buf, base, K, "executed"),
            "errors": L.unpack_field(buf, base, K, "errors"),
            "current": _work_func_name(buf, params, cur - 1) if cur else None,
        }
    return out


def _work_func_name(buf: mmap.mmap, params: ArenaParams, idx: int) -> str:
    """``module.qualname`` of a work's func, read from its pickle *without* unpickling
    (pickletools only parses: nothing from shared memory is executed here)."""
    W = L.WORK
    wbase = params.works + idx * L.WORK.stride
    n = L.unpack_field(buf, wbase, W, "payload_len")
    off = params.work_blobs + idx * L.WORK_BLOB
    try:
        outer = bytes(buf[off:off + min(n, L.WORK_PAYLOAD_MAX)])
        func_pickle = next(arg for op, arg, _ in pickletools.genops(outer)
                           if isinstance(arg, bytes))
        strings = [arg for op, arg, _ in pickletools.genops(func_pickle)
                   if isinstance(arg, str)]
        return ".".join(strings[:2]) if len(strings) >= 2 else f"#{idx}"
    except (StopIteration, ValueError, struct.error, EOFError):
        return f"#{idx}"


def format_table(runtimes: list[RuntimeSnapshot]) -> str:
    """Render snapshots as a text table (one block per runtime)."""
    lines: list[str] = []
    for rt in runtimes:
        lines.append(f"runtime: kthreadd {rt['kthreadd']}  owner {rt['owner']}  "
                     f"backend {rt['backend']}  kthreads {len(rt['kthreads'])}"
                     f"/{rt['max_kthreads']}")
        lines.append(f"  {'PID':>7} {'CPU':>3} {'AFFINITY':<10} {'STATE':<20} "
                     f"{'FLAGS':<6} {'QUEUED':>6} {'EXECUTED':>9} NAME  [CURRENT WORK]")
        lines.append(f"  {rt['kthreadd']:>7} {'-':>3} {'-':<10} {'(kthreadd)':<20} "
                     f"{'-':<6} {'-':>6} {'-':>9} kthreadd")
        for t in rt["kthreads"]:
            aff = format_cpulist(t["affinity"]) if t["affinity"] is not None else "?"
            cpu = "?" if t["cpu"] is None else t["cpu"]
            w = t.get("worker")
            queued = f"{w['queued']}" + (f"+{w['delayed']}d" if w["delayed"] else "") \
                if w else "-"
            executed = f"{w['executed']}" if w else "-"
            current = f"  [{w['current']}]" if w and w["current"] else ""
            lines.append(f"  {t['pid']:>7} {cpu:>3} {aff:<10} {t['state']:<20} "
                         f"{t['flags']:<6} {queued:>6} {executed:>9} {t['name']}{current}")
    if not runtimes:
        lines.append("no kproc runtime is running for this user")
    lines.append("flags: P per-CPU, S should stop, K should park, B bound, "
                 "A preferred affinity, F freezable, W worker, X exiting; "
                 "QUEUED: works on a worker's list (+N delayed: timers pending)")
    return "\n".join(lines)


def run(args: Namespace) -> int:
    """Entry point of ``kproc ps``.  Return: 0."""
    runtimes: list[RuntimeSnapshot] = []
    for pid, fd in find_runtimes():
        try:
            runtimes.append(snapshot(pid, fd))
        except (OSError, ValueError):
            continue   # exited meanwhile, or not ours to read
    return print_result(runtimes, args.json, format_table)


def add_parser(sub: _SubParsersAction[ArgumentParser]) -> ArgumentParser:
    """Add the ``ps`` subcommand to an argparse subparsers object."""
    p = sub.add_parser("ps", help="kthreadd and kthreads of every runtime of this user")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p
