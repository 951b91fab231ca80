"""What every experiment shares: the result line, leak and orphan accounting,
percentiles, and waiting for a call with a deadline."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

TOKEN_VAR = "KPROC_CHAOS_RUN"
HANG_S = 2.0          # a blocked call must return within this of its peer's death


@dataclass
class Result:
    """One experiment on one backend: its figures and whether it passed."""

    name: str
    backend: str
    trials: int = 0
    hangs: int = 0
    orphans: int = 0
    fds: int = 0
    maps: int = 0
    shm: int = 0
    lost: int = 0
    dup: int = 0
    errors: int = 0              # unexpected outcomes (wrong result, unclear error)
    recovery: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""

    def note(self, text: str) -> None:
        if len(self.notes) < 8:
            self.notes.append(text)

    @property
    def passed(self) -> bool:
        return not (self.hangs or self.orphans or self.fds or self.maps or self.shm
                    or self.lost or self.dup or self.errors)

    def line(self) -> str:
        if self.skipped:
            return f"{self.name}[{self.backend}]: SKIP ({self.skipped})"
        p50, p99 = percentile(self.recovery, 50), percentile(self.recovery, 99)
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        text = (f"{self.name}[{self.backend}]: {'PASS' if self.passed else 'FAIL'} "
                f"trials={self.trials} hangs={self.hangs} orphans={self.orphans} "
                f"leaked fds={self.fds} maps={self.maps} shm={self.shm} lost={self.lost} "
                f"dup={self.dup} errors={self.errors}{extra} recovery p50={p50} "
                f"p99={p99} ({self.seconds:.1f} s)")
        for n in self.notes:
            text += f"\n    {n}"
        return text


def percentile(values: list[float], pct: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    v = ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
    return f"{v * 1000:.1f}ms"


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line or "/dev/shm/" in line)


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def token_processes() -> list[psutil.Process]:
    """Live processes (not zombies) of this run other than this one."""
    token, me = os.environ[TOKEN_VAR], os.getpid()
    out = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            if p.environ().get(TOKEN_VAR) == token and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


class Accounting:
    """Around one experiment: what it leaves behind goes into its Result, then
    is removed (processes killed by pid, /dev/shm entries unlinked)."""

    def __init__(self, result: Result) -> None:
        self.result = result

    def __enter__(self) -> Accounting:
        self.t0 = time.monotonic()
        self.fds0, self.maps0, self.shm0 = _fds(), _maps(), _shm()
        return self

    def __exit__(self, *exc: object) -> None:
        import kproc            # the experiment's last runtime, if it left one
        kproc.shutdown()
        r = self.result
        deadline = time.monotonic() + HANG_S
        while (left := token_processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        r.orphans += len(left)
        for p in left:
            r.note(f"orphan: pid {p.pid} {p.name()!r}")
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        while time.monotonic() < deadline and _shm() - self.shm0:
            time.sleep(0.05)
        new_shm = _shm() - self.shm0
        r.shm += len(new_shm)
        for name in new_shm:
            r.note(f"/dev/shm entry left: {name}")
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass
        r.fds += max(0, len(_fds() - self.fds0) - 1)       # -1: listdir's own fd
        r.maps += max(0, _maps() - self.maps0)
        r.seconds = time.monotonic() - self.t0


def call_with_deadline(fn: Callable[[], Any], timeout: float = HANG_S
                       ) -> tuple[bool, Any, float]:
    """Run ``fn`` in a daemon thread.  Return (returned in time, its value or the
    exception it raised, seconds taken)."""
    box: list[Any] = []
    t0 = time.monotonic()

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:      # the outcome is what we report
            box.append(exc)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    return (not th.is_alive(), box[0] if box else None, time.monotonic() - t0)


class Blocked:
    """A call started in a thread that is expected to block until a peer dies."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.box: list[Any] = []
        self.done = threading.Event()

        def run() -> None:
            try:
                self.box.append(fn())
            except BaseException as exc:
                self.box.append(exc)
            finally:
                self.done.set()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = HANG_S) -> bool:
        return self.done.wait(timeout)

    @property
    def value(self) -> Any:
        return self.box[0] if self.box else None
