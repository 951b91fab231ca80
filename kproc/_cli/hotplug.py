"""``kproc hotplug status | down N | up N | cycle N --count K | --duration S``:
the command line of CPU hotplug (SPEC §6): argument checks, printing, a
progress bar, and leaving every CPU as it was found.

``cycle`` runs the timed experiment of ``kproc._hotplug.experiment``
(``--threads`` per-CPU thread registrations and ``--preferred``
preferred-affine kthreads on CPU N, N taken down and up K times) and prints
the percentiles of each phase.

Every CPU a command touches is back in the state it had before the
command when it ends, also on an error, Ctrl-C or SIGTERM (``finally``, with
SIGTERM/SIGHUP turned into KeyboardInterrupt): first through cpu_up() or
cpu_down() while the runtime lives, so the callbacks run, then by a raw
write if that failed.  ``down N`` and ``up N`` leave N as asked when they
succeed.  ``cycle`` refuses an offline CPU before changing anything.
Context: the command-line process, which owns the runtime it starts.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import kproc
from .._core.runtime import current_runtime
from .._core.topology import Topology, format_cpulist
from .._hotplug.experiment import cycle_experiment, report_dir
from .._hotplug.record import hotplug_stats
from .._bench.progress import bar
from .output import print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace, _SubParsersAction
    from collections.abc import Callable, Iterable
    from types import FrameType
    from typing import NoReturn

    # What signal.signal() takes and returns.
    SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

__all__ = ["add_parser", "percentiles", "run"]


# -- helpers -----------------------------------------------------------------------

def percentiles(samples_ns: Iterable[int]) -> dict[str, float | None]:
    """{n, min, mean, p50, p99, max} in milliseconds (None but n without samples)."""
    s = sorted(samples_ns)
    if not s:
        return {"n": 0, "min": None, "mean": None, "p50": None, "p99": None, "max": None}
    pick: Callable[[float], float] = lambda q: s[min(len(s) - 1, int(q * len(s)))] / 1e6  # noqa: E731
    return {"n": len(s), "min": s[0] / 1e6, "mean": sum(s) / len(s) / 1e6, "p50": pick(0.50),
            "p99": pick(0.99), "max": s[-1] / 1e6}


class _Restore:
    """Put every touched CPU back in the state it had before the command,
    whatever ends it."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.before: dict[int, bool] = {}
        self.old: dict[signal.Signals, SignalHandler] = {}

    def touch(self, cpu: int) -> None:
        """Note ``cpu``'s state before the command changes it."""
        self.before.setdefault(cpu, self.topology.is_online(cpu))

    def keep(self, cpu: int) -> None:
        """The command left ``cpu`` as it was asked to: do not restore it."""
        self.before.pop(cpu, None)

    def __enter__(self) -> _Restore:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self.old[sig] = signal.signal(sig, _interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Restore the touched CPUs and the signal handlers.  Idempotent:
        called while the runtime lives (through cpu_up/cpu_down, so the
        callbacks run), and again on exit (by a raw write if need be)."""
        try:
            for cpu, online in sorted(self.before.items()):
                if self.topology.is_online(cpu) == online:
                    continue
                rt = current_runtime()
                if rt is not None and not rt.closed:
                    try:
                        (kproc.cpu_up if online else kproc.cpu_down)(cpu)
                    except Exception:
                        pass
                if self.topology.is_online(cpu) != online:
                    self.topology.set_online(cpu, online)
        finally:
            for sig, handler in self.old.items():
                signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


# -- commands ---------------------------------------------------------------------------

def _status(args: Namespace, topology: Topology) -> int:
    rows: list[dict[str, int | bool]] = []
    online, isolated, nohz = topology.online(), topology.isolated(), topology.nohz_full()
    for cpu in sorted(topology.possible()):
        rows.append({"cpu": cpu, "online": cpu in online, "present": cpu in topology.present(),
                     "hotpluggable": topology.hotpluggable(cpu),
                     "node": topology.cpu_to_node(cpu), "isolated": cpu in isolated,
                     "nohz_full": cpu in nohz})
    hk = sorted(topology.housekeeping())
    if args.json:
        print_json({"sysfs_root": topology.root, "cpus": rows, "housekeeping": hk})
        return 0
    print(f"sysfs root {topology.root}: online {format_cpulist(online)}, "
          f"housekeeping {format_cpulist(hk)}")
    print(f"{'CPU':>4} {'online':>7} {'hotplug':>8} {'node':>5} {'isolated':>9} {'nohz_full':>10}")
    for r in rows:
        print(f"{r['cpu']:>4} {('yes' if r['online'] else 'no'):>7} "
              f"{('yes' if r['hotpluggable'] else 'no'):>8} {r['node']:>5} "
              f"{('yes' if r['isolated'] else ''):>9} {('yes' if r['nohz_full'] else ''):>10}")
    return 0


def _single(args: Namespace, restore: _Restore) -> int:
    down = args.action == "down"
    restore.touch(args.cpu)
    t0 = time.monotonic_ns()
    rc = kproc.cpu_down(args.cpu) if down else kproc.cpu_up(args.cpu)
    elapsed = time.monotonic_ns() - t0
    st = hotplug_stats()
    out = {"cpu": args.cpu, "action": args.action, "result": rc, "ms": elapsed / 1e6,
           "callbacks_ms": (st["teardown_ns"] if down else st["startup_ns"]) / 1e6,
           "write_ms": st["write_ns"] / 1e6}
    if rc == 0:
        restore.keep(args.cpu)                # the state asked for
    if args.json:
        print_json(out)
    else:
        verdict = {0: "done", 1: "already " + ("offline" if down else "online")}.get(
            rc, f"failed and rolled back: {os.strerror(-rc) if rc < 0 else rc}")
        print(f"cpu_{args.action}({args.cpu}): {verdict} in {out['ms']:.2f} ms "
              f"(sysfs write {out['write_ms']:.2f} ms, callbacks {out['callbacks_ms']:.2f} ms)")
    return 0 if rc in (0, 1) else 1


_LABELS = [("down", "cpu_down total"), ("park", "  teardown (parking)"),
           ("write_down", "  sysfs write 0"), ("up", "cpu_up total"),
           ("write_up", "  sysfs write 1"), ("unpark", "  startup (unpark, re-affine)"),
           ("back", "per-CPU thread back on its CPU")]


def _cycle(args: Namespace, restore: _Restore) -> int:
    restore.touch(args.cpu)
    count = args.count if args.count is not None or args.duration is not None else 10
    total: float = count if args.duration is None else float(args.duration)
    with bar(total, f"cycling CPU {args.cpu}", unit="cycle" if args.duration is None
             else "s") as progress:
        t0 = time.monotonic()

        def tick() -> None:
            if args.duration is None:
                progress.update(1)
            else:
                progress.update(min(time.monotonic() - t0, total) - progress.n)
        res = cycle_experiment(args.cpu, count if args.duration is None else args.count,
                               args.threads, args.preferred, progress=tick,
                               settle=args.settle / 1000.0, duration=args.duration)
    cycles = len(res["down"])
    phases = {k: percentiles(v) for k, v in res.items() if isinstance(v, list)}
    if args.json:
        print_json({"cpu": args.cpu, "count": cycles, "threads": args.threads,
                    "preferred": args.preferred, "duration": args.duration,
                    "ms": {**phases, "lost": res["lost"]},
                    "samples_ns": {k: v for k, v in res.items() if isinstance(v, list)}})
        return 0
    print(f"CPU {args.cpu}: {cycles} offline/online cycles, {args.threads} per-CPU "
          f"thread registration(s), {args.preferred} preferred-affine kthread(s)")
    cols = ("min", "mean", "p50", "p99", "max")
    print(f"  {'ms':<32} " + " ".join(f"{c:>8}" for c in cols) + f" {'n':>6}")
    for key, label in _LABELS:
        st = phases[key]
        if st["n"]:
            print(f"  {label:<32} " + " ".join(f"{st[c]:>8.3f}" for c in cols) +
                  f" {st['n']:>6}")
    if res["lost"]:
        print(f"  {res['lost']} per-CPU thread(s) were not back on CPU {args.cpu} within 2 s")
    return 0


def _refuse(args: Namespace, topology: Topology) -> str | None:
    """Why ``args`` cannot run on this topology, or None (nothing changed yet)."""
    if args.cpu not in topology.possible():
        return f"CPU {args.cpu} does not exist here (possible: " \
               f"{format_cpulist(topology.possible())})"
    if args.action == "cycle" and not topology.is_online(args.cpu):
        return (f"CPU {args.cpu} is offline: cycle takes an online CPU down and back up; "
                f"bring it online first (kproc hotplug up {args.cpu})")
    return None


def run(args: Namespace) -> int:
    """Entry point of ``kproc hotplug`` (arguments checked).  Return: exit status:
    0; 1 on an error or a failed cpu_down/cpu_up; 130 when interrupted."""
    topology = Topology(args.sysfs_root)
    if args.action == "status":
        return _status(args, topology)
    refusal = _refuse(args, topology)
    if refusal:
        print(f"kproc hotplug {args.action}: {refusal}", file=sys.stderr)
        return 2
    try:
        with report_dir(), _Restore(topology) as restore:
            with kproc.start(sysfs_root=args.sysfs_root):
                try:
                    if args.action == "cycle":
                        return _cycle(args, restore)
                    return _single(args, restore)
                finally:
                    restore.close()         # while the runtime (and its cpuhp) lives
    except KeyboardInterrupt:
        print("kproc hotplug: interrupted; every CPU touched is as it was before",
              file=sys.stderr)
        return 130
    except (ValueError, PermissionError, OSError) as exc:
        print(f"kproc hotplug: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: _SubParsersAction[ArgumentParser]) -> ArgumentParser:
    """Add the ``hotplug`` subcommand to an argparse subparsers object."""
    p = sub.add_parser("hotplug", help="CPU hotplug: status and timed experiments")
    p.add_argument("action", choices=["status", "down", "up", "cycle"])
    p.add_argument("cpu", nargs="?", type=int, help="CPU number (down, up, cycle)")
    p.add_argument("--count", type=int, default=None,
                   help="cycles (cycle; default 10, or as many as --duration allows)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="cycle for S seconds (at least one cycle; with --count, "
                        "whichever ends first)")
    p.add_argument("--threads", type=int, default=1,
                   help="per-CPU thread registrations during cycle (default 1)")
    p.add_argument("--preferred", type=int, default=0,
                   help="kthreads preferring the CPU during cycle (default 0)")
    p.add_argument("--settle", type=float, default=0.0, metavar="MS",
                   help="pause before each offline and each online during cycle, so "
                        "one action is not slowed by the kernel's work after the last "
                        "(default 0)")
    p.add_argument("--sysfs-root", default="/sys", help="a fake tree (kproc.fake_sysfs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_checked)
    return p


def _checked(args: Namespace) -> int:
    """Refuse bad arguments with exit status 2, else run()."""
    if args.action != "status" and args.cpu is None:
        print(f"kproc hotplug {args.action}: a CPU number is needed", file=sys.stderr)
        return 2
    if (args.count is not None and args.count < 1) or args.threads < 0 or \
            args.preferred < 0 or not 0 <= args.settle <= 10000 or \
            (args.duration is not None and not 0 < args.duration <= 86400):
        print("kproc hotplug: --count must be >= 1, --duration between 0 and 86400 s, "
              "--threads and --preferred >= 0, --settle between 0 and 10000 ms",
              file=sys.stderr)
        return 2
    return run(args)
