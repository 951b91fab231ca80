"""``kproc ps``: kthreadd and its kthreads for every runtime of this user.

Runtimes are found by their kthreadd processes (comm ``kthreadd``, started
with ``kproc._kthread.kthreadd``, same user).  Each arena is read from
``/proc/<kthreadd>/fd/<N>`` (the memfd is not in any namespace, and only the
same user, or root, may open it) without taking any lock: the table is a
snapshot, possibly torn for a kthread changing state meanwhile.

Run by root, ``kproc ps`` reads the arenas of *every* user, and any user can
start a process that looks like kthreadd: so what is read is treated as
hostile (:class:`ArenaFile`).  The descriptor must be a regular file (a FIFO
there would block the open); it is read with ``pread``, never mapped (a file
its owner truncates under a mapping would kill us with SIGBUS); the header's
sizes must be within ``start()``'s limits and the file long enough for them;
every slot index read from it is checked against its table; a list that
loops ends the read with ``ValueError``, and list walks share a bounded budget
of steps;
``psutil`` is asked only about pids that are kthreadd's children.  Nothing
read is unpickled (a work's function name is parsed by ``pickletools``).
"""

from __future__ import annotations

import os
import pickletools
import re
import stat
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

__all__ = ["find_runtimes", "ArenaFile", "snapshot", "format_table", "add_parser", "run"]

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
        m = re.search(r"--arena=(\d{1,9})\b", cmd)
        if "kproc._kthread.kthreadd" in cmd and m:
            found.append((proc.pid, int(m.group(1))))
    return found


# start()'s limits (check_int in runtime.start) and the completion pool's rule.
MAX_KTHREADS = 1 << 16
MAX_WORKS = 1 << 22
# At most this many list steps per snapshot (each one pread): a bound on time.
WALK_BUDGET = 1 << 16


class ArenaFile:
    """Another process's arena, read with ``pread`` and checked (see module doc).

    Attributes: ``params`` (the sizes, validated), ``size`` (of the file).
    Raises (constructor and reads): ValueError for anything malformed, OSError.
    """

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.what = pid, f"process {pid}'s arena (fd {fd})"
        path = f"/proc/{pid}/fd/{fd}"
        st = os.stat(path)              # never blocks, whatever the file is
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{self.what} is not a regular file")
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fst = os.fstat(self.fd)
            if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != \
                    (st.st_dev, st.st_ino):
                raise ValueError(f"{self.what} changed while it was opened")
            self.size = fst.st_size
            self.header = self.read(0, L.HEADER.size)
            self.params = self._params()
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def read(self, off: int, n: int) -> bytes:
        """``n`` bytes at ``off``.  Raises: ValueError past the end of the file."""
        if off < 0 or n < 0 or off + n > self.size:
            raise ValueError(f"{self.what} is malformed: {n} bytes at {off} are past "
                             f"its end ({self.size})")
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise ValueError(f"{self.what} shrank while it was read")
        return data

    def head(self, name: str) -> int:
        return L.unpack_field(self.header, 0, L.HEADER, name)

    def _params(self) -> ArenaParams:
        if self.head("magic") != L.MAGIC:
            raise ValueError(f"process {self.pid} holds no kproc arena")
        if self.head("layout_version") != L.LAYOUT_VERSION:
            raise ValueError(f"process {self.pid} runs a kproc of another layout version")
        n, comps = self.head("max_kthreads"), self.head("max_completions")
        works = self.head("max_works") - marker_slots(n)     # the user's part of the table
        if not (1 <= n <= MAX_KTHREADS and 1 <= works <= MAX_WORKS
                and comps == max(1024, works)):
            raise ValueError(f"{self.what} is malformed: table sizes {n}, {comps}, {works}")
        params = ArenaParams(n, comps, works)
        if params.size > self.size:
            raise ValueError(f"{self.what} is malformed: {self.size} bytes, its tables "
                             f"need {params.size}")
        return params

    def table(self, off: int, count: int, stride: int) -> bytes:
        """A whole table: ``count`` records of ``stride`` bytes at ``off``."""
        return self.read(off, count * stride)


def snapshot(pid: int, fd: int) -> RuntimeSnapshot:
    """Read one runtime: a dict with kthreadd's pid and one dict per kthread.

    Raises: ValueError (not an arena, another layout, or malformed), OSError.
    """
    arena = ArenaFile(pid, fd)
    try:
        params, T = arena.params, L.TASK
        n = params.max_kthreads
        backend = {1: "futex", 2: "posix"}.get(arena.head("backend"), "?")
        tasks_raw = arena.table(params.tasks, n, T.size)
        workers = _workers(arena)
        children = _children(pid)
        tasks: list[TaskRow] = []
        for idx in range(n):
            base = idx * T.size
            slot = L.unpack_field(tasks_raw, base, T, "slot")
            if slot not in (L.SLOT_LIVE, L.SLOT_CREATING):
                continue
            worker = workers.get((idx + 1, L.unpack_field(tasks_raw, base, T, "gen")))
            tasks.append(_task_row(arena, tasks_raw, idx, slot, worker, children))
        return {"kthreadd": pid, "owner": arena.head("owner_pid"),
                "backend": backend, "max_kthreads": n, "kthreads": tasks}
    finally:
        arena.close()


def _children(pid: int) -> set[int]:
    """Pids of kthreadd's children: the only processes ``psutil`` is asked about."""
    try:
        return {p.pid for p in psutil.Process(pid).children()}
    except psutil.Error:
        return set()


def _task_row(arena: ArenaFile, tasks_raw: bytes, idx: int, slot: int,
              worker: WorkerCounters | None, children: set[int]) -> TaskRow:
    T = L.TASK
    base = idx * T.size
    pid = L.unpack_field(tasks_raw, base, T, "pid")
    flags = L.unpack_field(tasks_raw, base, T, "flags")
    state = L.unpack_field(tasks_raw, base, T, "state")
    name_len = min(L.unpack_field(tasks_raw, base, T, "name_len"), L.NAME_MAX)
    blob = arena.params.blobs + idx * L.BLOB_SIZE
    name = arena.read(blob, name_len).decode("utf-8", "replace")
    cpu_now: int | None = None
    affinity: list[int] | None = None
    if pid in children:
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
        "bound_cpu": L.unpack_field(tasks_raw, base, T, "cpu"), "worker": worker,
    }


def _work_index(arena: ArenaFile, link: int) -> int:
    """Work slot index of a link (index + 1) read from the arena.  Raises: ValueError."""
    if not 1 <= link <= arena.params.max_works:
        raise ValueError(f"{arena.what} is malformed: work link {link} is out of range")
    return link - 1


def _workers(arena: ArenaFile) -> dict[tuple[int, int], WorkerCounters]:
    """{(task index + 1, task gen): worker counters} for every worker with a kthread."""
    K, W, params = L.WORKER, L.WORK, arena.params
    raw = arena.table(params.workers, params.max_kthreads, K.stride)
    out: dict[tuple[int, int], WorkerCounters] = {}
    now = time.monotonic_ns()
    # A legitimate list holds each work once, so a work seen twice is a loop;
    # a list longer than the budget is counted only that far (due timers are
    # moved to the work list within a tick: such a count is transient anyway).
    budget = WALK_BUDGET
    seen: set[int] = set()
    for idx in range(params.max_kthreads):
        base = idx * K.stride
        if not L.unpack_field(raw, base, K, "inuse"):
            continue
        task = L.unpack_field(raw, base, K, "task")
        if not task:
            continue
        due = 0                     # expired timers count as queued (see _delayed)
        t = L.unpack_field(raw, base, K, "thead")
        while t and budget > 0:
            budget -= 1
            if t in seen:
                raise ValueError(f"{arena.what} is malformed: a timer list loops")
            seen.add(t)
            work = arena.read(params.works + _work_index(arena, t) * W.stride, W.size)
            if L.unpack_field(work, 0, W, "expires") > now:
                break
            due += 1
            t = L.unpack_field(work, 0, W, "next")
        cur = L.unpack_field(raw, base, K, "current")
        out[(task, L.unpack_field(raw, base, K, "task_gen"))] = {
            "queued": L.unpack_field(raw, base, K, "depth") + due,
            "delayed": max(0, L.unpack_field(raw, base, K, "ndelayed") - due),
            "executed": L.unpack_field(raw, base, K, "executed"),
            "errors": L.unpack_field(raw, base, K, "errors"),
            "current": _work_func_name(arena, _work_index(arena, cur)) if cur else None,
        }
    return out


def _work_func_name(arena: ArenaFile, idx: int) -> str:
    """``module.qualname`` of a work's func, read from its pickle *without* unpickling
    (pickletools only parses: nothing from shared memory is executed here)."""
    W, params = L.WORK, arena.params
    n = L.unpack_field(arena.read(params.works + idx * W.stride, W.size), 0, W,
                       "payload_len")
    try:
        outer = arena.read(params.work_blobs + idx * L.WORK_BLOB, min(n, L.WORK_PAYLOAD_MAX))
        func_pickle = next(arg for op, arg, _ in pickletools.genops(outer)
                           if isinstance(arg, bytes))
        strings = [arg for op, arg, _ in pickletools.genops(func_pickle)
                   if isinstance(arg, str)]
        return ".".join(strings[:2]) if len(strings) >= 2 else f"#{idx}"
    except (StopIteration, ValueError, struct.error, EOFError, OverflowError):
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
        except (OSError, ValueError, struct.error):
            continue   # exited meanwhile, not ours to read, or malformed
    return print_result(runtimes, args.json, format_table)


def add_parser(sub: _SubParsersAction[ArgumentParser]) -> ArgumentParser:
    """Add the ``ps`` subcommand to an argparse subparsers object."""
    p = sub.add_parser("ps", help="kthreadd and kthreads of every runtime of this user")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p
