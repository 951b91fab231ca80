"""``python benchmarks/ab.py A_DIR B_DIR [--rounds N] [CASE ...]``: the same kproc cases on
two checkouts, alternating A/B, each run in a fresh process, under the test lock.

For a before/after speed check on a shared (noisy) host: rounds alternate which checkout
goes first, each round holds ``/tmp/kproc-test.lock`` (one round is well under a minute),
and the table gives each case's median, min and max over the rounds.  A checkout is a
kproc work tree with its ``.venv`` built (``make venv``); both layouts of the benchmark
cases are known: ``kproc/_bench/`` (``kproc bench``) and the older ``benchmarks/_cases.py``
of the tree before issue #9's redesign.  ``drain`` uses the public API only: works queued
on a parked worker, then the time per work of the unparked worker's drain (the worker loop
alone, no queuer beside it; the median of 37 drains of 2,000 works after 3 warm ones).
Writes every result as a JSON line to ``--out`` (default ``benchmarks/out/ab.jsonl``).
"""

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time

LOCK = "/tmp/kproc-test.lock"

# case: (module family, call, figures); family "pp", "wk" or "cy" (see MODULES).
CASES = {
    "pp_futex": ("pp", "pingpong_kproc(20000, 'futex')", "lat_us"),
    "pp_posix": ("pp", "pingpong_kproc(4000, 'posix')", "lat_us"),
    "dispatch": ("wk", "dispatch_kproc(5000)", "dispatch"),
    "tput1": ("wk", "throughput_kproc(200000, 1)", "tput"),
    "tput2": ("wk", "throughput_kproc(200000, 2)", "tput"),
    "tput3": ("wk", "throughput_kproc(200000, 3)", "tput"),
    "cycle": ("cy", "cycle_kproc(300)", "lat_ms"),
    "fork": ("cy", "cycle_fork(300)", "lat_ms"),
    "sustained": ("cy", "sustained(3)", "rate"),
    "scale": ("cy", "scale_kproc(512)", "scale"),
    "scale_fork": ("cy", "scale_fork(512)", "scale"),
    "scale4k": ("cy", "scale_kproc(4096)", "scale"),
    "scale_fork4k": ("cy", "scale_fork(4096)", "scale"),
    "drain": ("ab", "drain(2000, 40)", "drain"),
}
MODULES = {
    "new": {"pp": "kproc._bench.pingpong", "wk": "kproc._bench.workers",
            "cy": "kproc._bench.create", "ab": "ab"},
    "old": {"pp": "benchmarks._cases", "wk": "benchmarks._worker_cases",
            "cy": "benchmarks._cases", "ab": "ab"},
}


def noop(work):
    """work: nothing (``drain``)."""


def drain(n, reps):
    """ns per work of a worker draining ``n`` queued no-op works, median of ``reps - 3``."""
    import kproc
    os.sched_setaffinity(0, {0})
    per = []
    with kproc.start(max_works=n + 64):
        worker = kproc.kthread_create_worker_on_cpu(1, 0, "ab/%u")
        works = [kproc.KthreadWork(noop) for _ in range(n)]
        kproc.kthread_flush_worker(worker)
        task = worker.task
        for _ in range(reps):
            kproc.kthread_park(task)
            for w in works:
                kproc.kthread_queue_work(worker, w)
            t0 = time.monotonic_ns()
            kproc.kthread_unpark(task)
            kproc.kthread_flush_worker(worker)
            per.append((time.monotonic_ns() - t0) / n)
        kproc.kthread_destroy_worker(worker)
    return per[3:]


def _q(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def figures(kind, r):
    """The figures of one run from a case's raw result."""
    if kind == "tput":
        return {"M/s": r[1] / r[0] * 1e3}
    if kind == "dispatch":
        one, rt = (r[0], r[1]) if isinstance(r[0], list) else (r[:len(r) // 2], r[len(r) // 2:])
        return {"one-way p50 µs": _q(one, .5) / 1e3, "one-way p99 µs": _q(one, .99) / 1e3,
                "round trip p50 µs": _q(rt, .5) / 1e3}
    if kind == "lat_us":
        return {"p50 µs": _q(r, .5) / 1e3, "p99 µs": _q(r, .99) / 1e3}
    if kind == "rate":
        return {"cycles/s": r[0]}
    if kind == "scale":
        one = r["one_ns"]
        return {"create all s": r["create_ns"] / 1e9, "USS KiB": r["uss"] / 1024,
                "stop all s": r["stop_ns"] / 1e9, "one p50 N=100 ms": _q(one[100:200], .5) / 1e6,
                "one p50 last ms": _q(one[-100:], .5) / 1e6}
    if kind == "lat_ms":
        return {"p50 ms": _q(r, .5) / 1e6, "p90 ms": _q(r, .9) / 1e6}
    return {"ns/work": statistics.median(r)}


def run(tree, case):
    """One case in a fresh process of checkout ``tree``; its figures."""
    family, call, kind = CASES[case]
    layout = "new" if os.path.isdir(os.path.join(tree, "kproc", "_bench")) else "old"
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import json, sys; import {MODULES[layout][family]} as m; r = m.{call}; "
            "sys.stdout.write('\\n@@' + json.dumps(r) + '\\n')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPROC_")}
    env["PYTHONPATH"] = tree + os.pathsep + here
    out = subprocess.run([os.path.join(tree, ".venv", "bin", "python"), "-c", code], cwd=tree,
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{case} in {tree} failed:\n{out.stderr}")
    line = [x for x in out.stdout.splitlines() if x.startswith("@@")][-1]
    return figures(kind, json.loads(line[2:]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="checkout A (e.g. a worktree of the commit before)")
    p.add_argument("b", help="checkout B")
    p.add_argument("cases", nargs="*", default=list(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", default=os.path.join("benchmarks", "out", "ab.jsonl"))
    args = p.parse_args(argv)
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    results = {}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a") as log:
        for i in range(args.rounds):
            order = "AB" if i % 2 == 0 else "BA"
            with open(LOCK, "a") as lk:
                fcntl.flock(lk, fcntl.LOCK_EX)
                load = os.getloadavg()[0]
                for case in args.cases:
                    for side in order:
                        fig = run(trees[side], case)
                        log.write(json.dumps({"round": i, "side": side, "tree": trees[side],
                                              "case": case, "load1": load, **fig}) + "\n")
                        log.flush()
                        for k, v in fig.items():
                            results.setdefault((case, k), {}).setdefault(side, []).append(v)
            print(f"round {i + 1}/{args.rounds} done (load average {load:.1f})",
                  file=sys.stderr)
    print(f"{'case':<9} {'figure':<18} {'A median':>9} {'A min-max':>17} {'B median':>9} "
          f"{'B min-max':>17} {'B/A':>6}")
    for (case, k), sides in results.items():
        a, b = sides["A"], sides["B"]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{case:<9} {k:<18} {ma:>9.3f} {min(a):>8.3f}-{max(a):<8.3f} {mb:>9.3f} "
              f"{min(b):>8.3f}-{max(b):<8.3f} {mb / ma:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
