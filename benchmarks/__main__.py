"""``python -m benchmarks [--quick] [--json PATH]``: the kproc latency suite.

Every comparison runs side by side in one invocation and is printed as a table
of p50, p99 and the ratio of each p50 to kproc's.  Two-process figures are
pinned: caller on CPU 0, peer on CPU 1.
"""

import argparse
import json
import os
import subprocess
import sys

from ._pool_cases import pool
from ._stats import plot, progress, summarize, table

HERE = os.path.dirname(os.path.abspath(__file__))
FLOOR = os.path.join(HERE, "c", "futex_floor")


def run_case(name, n, timeout=600):
    root = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "benchmarks._cases", name, str(n)],
                         capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark case {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def c_floor(n, spin_ns):
    if not os.path.exists(FLOOR):
        subprocess.run(["cc", "-O2", "-o", FLOOR, FLOOR + ".c"], check=True)
    out = subprocess.run([FLOOR, str(n), str(spin_ns), "0", "1"], capture_output=True,
                         text=True, check=True, timeout=300)
    return [int(x) for x in out.stdout.split()]


def pingpong(quick, results):
    n = 5000 if quick else 50000
    rows = []
    cases = [("kproc futex", "pingpong_kproc_futex", n),
             ("kproc posix", "pingpong_kproc_posix", n // 5),
             ("multiprocessing.Event", "pingpong_mp_event", n // 5),
             ("posix_ipc semaphores", "pingpong_posix_ipc", n // 5),
             ("os.pipe", "pingpong_pipe", n // 5)]
    with progress(len(cases) + 2, "ping-pong") as bar:
        for label, case, rounds in cases:
            rows.append(summarize(label, run_case(case, rounds)))
            bar.update()
        rows.append(summarize("C futex floor (spin 50 µs)", c_floor(n, 50_000)))
        bar.update()
        rows.append(summarize("C futex floor (no spin)", c_floor(n // 5, 0)))
        bar.update()
    table("Completion ping-pong round trip (caller CPU 0, peer CPU 1)", rows, "kproc futex")
    results["pingpong"] = rows


def cycle(quick, results):
    n = 200 if quick else 2000
    cases = [("kproc create→wake→stop", "cycle_kproc", n),
             ("kproc, caller touched 2 GB", "cycle_kproc_2g", n // 2),
             ("os.fork+waitpid (small Python)", "cycle_fork", n),
             ("os.fork+waitpid (2 GB caller)", "cycle_fork_2g", max(10, n // 20)),
             ("multiprocessing fork", "cycle_mp_fork", n // 2),
             ("multiprocessing forkserver", "cycle_mp_forkserver", n // 4),
             ("multiprocessing spawn", "cycle_mp_spawn", max(10, n // 20))]
    rows = []
    with progress(len(cases), "create cycle") as bar:
        for label, case, rounds in cases:
            rows.append(summarize(label, run_case(case, rounds), "ms", 1e6))
            bar.update()
    table("Create → wake → stop (one process per cycle)", rows, "kproc create→wake→stop")
    results["cycle"] = rows


def scale(quick, results):
    count = 4096
    created, stopped, uss = run_case("scale", count, timeout=900)
    print(f"\nScale: {count} kthreads created and parked in {created / 1e9:.2f} s "
          f"({created / count / 1e6:.2f} ms each), all stopped in {stopped / 1e9:.2f} s; "
          f"USS per parked kthread {uss / 1024:.0f} KiB")
    results["scale"] = {"count": count, "create_park_s": created / 1e9,
                        "stop_all_s": stopped / 1e9, "uss_kib": uss / 1024}


def workers(quick, results):
    """Dispatch latency, no-op throughput and delayed-work lateness (issue #3)."""
    n = 2000 if quick else 20000
    rows_one, rows_rt = [], []
    cases = [("kproc worker", "dispatch_kproc", n),
             ("ProcessPoolExecutor", "dispatch_ppe", max(200, n // 10)),
             ("multiprocessing.Pool", "dispatch_pool", max(200, n // 10))]
    with progress(len(cases), "dispatch") as bar:
        for label, case, rounds in cases:
            s = run_case(case, rounds)
            half = len(s) // 2
            rows_one.append(summarize(label, s[:half]))
            rows_rt.append(summarize(label + " (round trip)", s[half:]))
            bar.update()
    table("Work dispatch, queue → start of execution (caller CPU 0, worker CPU 1)",
          rows_one + rows_rt, "kproc worker")
    ppe_rt = next(r for r in rows_rt if r["name"].startswith("ProcessPool"))
    print(f"  kproc dispatch p50 is 1/{ppe_rt['p50'] / rows_one[0]['p50']:.0f} of "
          "ProcessPoolExecutor's round trip (target: 1/30 or better)")
    results["dispatch"] = rows_one + rows_rt

    count = 100_000 if quick else 1_000_000
    tcases = [("kproc, 1 producer", "throughput_kproc", count),
              ("kproc, caller + 2 kthreads", "throughput_kproc_3", count),
              ("ProcessPoolExecutor.submit", "throughput_ppe", count // 20),
              ("multiprocessing.Pool.apply_async", "throughput_pool", count // 20)]
    trows = []
    with progress(len(tcases), "throughput") as bar:
        for label, case, c in tcases:
            elapsed, done = run_case(case, c)
            trows.append({"name": label, "works_per_s": done / elapsed * 1e9, "n": done})
            bar.update()
    print("\nNo-op work throughput, one worker (caller CPU 0, worker CPU 1)")
    ref = trows[0]["works_per_s"]
    for r in trows:
        r["ratio_to_kproc"] = r["works_per_s"] / ref
        print(f"  {r['name']:<34} {r['works_per_s']:>12,.0f} /s {r['ratio_to_kproc']:>10.3f}x")
    results["throughput"] = trows

    lcount = 2000
    lcases = [("kproc delayed work", "lateness_kproc"),
              ("threading.Timer", "lateness_timer"),
              ("cyclictest (SCHED_OTHER)", "lateness_cyclictest")]
    lrows = []
    with progress(len(lcases), "lateness") as bar:
        for label, case in lcases:
            s = run_case(case, lcount)
            if s:
                lrows.append(summarize(label, s))
            bar.update()
    table(f"Delayed-work lateness, {lcount} timers 1 ms apart (worker CPU 1)", lrows,
          "kproc delayed work")
    cyc = next((r for r in lrows if r["name"].startswith("cyclictest")), None)
    if cyc:
        print(f"  kproc / cyclictest: p50 {lrows[0]['p50'] / cyc['p50']:.2f}x, "
              f"p99 {lrows[0]['p99'] / cyc['p99']:.2f}x (target: 2x or better)")
    else:
        print("  cyclictest not installed (Debian package rt-tests): no floor to compare")
    results["lateness"] = lrows


def hotplug(quick, results):
    """cpu_down/cpu_up vs the raw sysfs write, and external-change detection (root only)."""
    from ._hotplug_cases import hotplug_cpu
    cpu = hotplug_cpu()
    if cpu is None:
        print("\nHotplug: skipped (needs root and a writable cpuN/online)")
        return
    n = 20 if quick else 100
    with progress(3, "hotplug") as bar:
        raw = run_case("hotplug_raw", n)
        bar.update()
        kp = run_case("hotplug_kproc", n)
        bar.update()
        det = run_case("hotplug_detect", n)
        bar.update()
    rows = [summarize("raw sysfs write 0", raw["down"], "ms", 1e6),
            summarize("kproc cpu_down", kp["down"], "ms", 1e6),
            summarize("  teardown (4 per-CPU parked)", kp["park"], "ms", 1e6),
            summarize("raw sysfs write 1", raw["up"], "ms", 1e6),
            summarize("kproc cpu_up", kp["up"], "ms", 1e6),
            summarize("  startup (unpark, re-affine)", kp["unpark"], "ms", 1e6),
            summarize("  same syscalls, plain process", raw["floor"], "ms", 1e6),
            summarize("  per-CPU thread back on CPU", kp["back"], "ms", 1e6)]
    table(f"CPU {cpu} hotplug: 4 SmpHotplugThread registrations (8 per-CPU threads on "
          "2 CPUs, 4 on the CPU cycled) + 4 preferred-affine kthreads", rows,
          "raw sysfs write 0")
    for verb, k, r, w in (("down", 1, 0, "write_down"), ("up", 4, 3, "write_up")):
        extra = rows[k]["p50"] - rows[r]["p50"]
        own = sorted(t - x for t, x in zip(kp[verb], kp[w]))
        own50, own99 = own[len(own) // 2] / 1e6, own[min(len(own) - 1, len(own) * 99 // 100)] / 1e6
        print(f"  cpu_{verb}: p50 = raw write + {extra:.2f} ms; beyond its own sysfs write "
              f"p50 {own50:.2f} ms, p99 {own99:.2f} ms (target: + 5 ms or less)")
        results[f"hotplug_{verb}_overhead_ms"] = {"vs_raw_p50": extra, "own_p50": own50,
                                                  "own_p99": own99}
    print(f"  cpu_up startup p50 {rows[5]['p50']:.2f} ms against {rows[6]['p50']:.2f} ms for "
          "the same system calls from a plain process right after a raw online")
    drows = [summarize("external change noticed", det["noticed"], "ms", 1e6),
             summarize("  per-CPU thread parked/running", det["handled"], "ms", 1e6)]
    table("External hotplug (raw write behind kproc's back; "
          f"{'netlink uevents' if det['netlink'] else 'polling'}), from the write's return",
          drows, "external change noticed")
    print(f"  noticed p50 {drows[0]['p50']:.2f} ms (target: 20 ms or less)")
    results["hotplug"] = rows
    results["hotplug_detect"] = drows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (< 2 minutes)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--png", metavar="PATH", default="benchmarks-latency.png",
                        help="latency CDFs as a PNG where matplotlib is installed "
                             "(default: %(default)s)")
    parser.add_argument("--only", choices=["pingpong", "cycle", "scale", "workers", "hotplug",
                                           "pool"],
                        action="append")
    args = parser.parse_args(argv)
    results = {"quick": args.quick, "cpus": os.cpu_count()}
    for name, fn in (("pingpong", pingpong), ("cycle", cycle), ("scale", scale),
                     ("workers", workers), ("hotplug", hotplug), ("pool", pool)):
        if not args.only or name in args.only:
            fn(args.quick, results)
    sections = {"Completion ping-pong round trip": results.get("pingpong"),
                "Create → wake → stop": results.get("cycle"),
                "Work dispatch": results.get("dispatch"),
                "Delayed-work lateness": results.get("lateness"),
                "CPU hotplug": results.get("hotplug")}
    sections = {k: v for k, v in sections.items() if v}
    if sections and args.png and plot(sections, args.png):
        print(f"\nlatency distributions written to {args.png}")
    if args.json:
        for rows in sections.values():
            for row in rows:
                row.pop("samples", None)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
