"""KthreadPoolExecutor against ProcessPoolExecutor (and loky if installed), side by side.

``python -m benchmarks --only pool`` (or ``python -m benchmarks._pool_cases [--quick]``)
runs, each case in a fresh process
(``python -m benchmarks._pool_cases CASE N`` prints one JSON line):

* the ``submit(noop).result()`` round trip (p50/p99), kproc's pool on the
  housekeeping CPUs against ProcessPoolExecutor (fork context) with the same
  number of workers; target: kproc p50 <= 1/30 of ProcessPoolExecutor's;
* 20,000 no-op calls through ``map(chunksize=1)``: calls per second;
  target: >= 20x ProcessPoolExecutor's;
* a CPU-bound map (sha256 of 64 KiB blocks) on N workers: wall time and the
  peak RSS summed over the caller and its workers (sampled every 5 ms).

Nothing is pinned: the pools decide where their workers run (kproc's are
bound one per CPU, ProcessPoolExecutor's float).
"""

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import psutil



def summarize(name, samples):
    s = sorted(samples)
    pick = (lambda q: s[min(len(s) - 1, int(q / 100 * len(s)))] / 1e3) if s else \
        (lambda q: float("nan"))
    return {"name": name, "n": len(s), "p50": pick(50), "p90": pick(90), "p99": pick(99),
            "max": s[-1] / 1e3 if s else float("nan")}


def table(title, rows, ref):
    print(f"\n{title} (µs, lower is better)")
    base = next(r for r in rows if r["name"] == ref)["p50"]
    for r in rows:
        print(f"  {r['name']:<30} n={r['n']:<7} p50 {r['p50']:>9.2f} p90 {r['p90']:>9.2f} "
              f"p99 {r['p99']:>9.2f} max {r['max']:>10.2f}  {r['p50'] / base:>7.2f}x")


class progress:
    """No bar (the harness draws its own); the same interface."""

    def __init__(self, total, desc):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

BLOCK = 64 * 1024


def noop(*_args):
    return None


def digest(i):
    """sha256 of a 64 KiB block derived from ``i``, 8 rounds."""
    block = i.to_bytes(8, "little") * (BLOCK // 8)
    h = b""
    for _ in range(8):
        h = hashlib.sha256(block + h).digest()
    return h.hex()


def _ncpus():
    import kproc
    return len(kproc.housekeeping_cpumask())


def _kproc_pool():
    import kproc
    return kproc.KthreadPoolExecutor()     # on the default runtime (_ncpus started it)


def _ppe_pool(n):
    return ProcessPoolExecutor(n, mp_context=mp.get_context("fork"))


def _loky_pool(n):
    import loky       # optional: only where installed
    return loky.get_reusable_executor(max_workers=n)


def _pool(which, n):
    if which == "kproc":
        return _kproc_pool()
    if which == "loky":
        return _loky_pool(n)
    return _ppe_pool(n)


def _workers_of(pool):
    eng = getattr(getattr(pool, "_pool", None), "engine", None)
    if eng is not None:
        return [w.task.pid for w in eng.workers]
    return [p.pid for p in getattr(pool, "_processes", {}).values()]


class _PeakRss:
    """Sum of RSS over the caller and the pool's workers, sampled in a thread."""

    def __init__(self, pids):
        self.procs = [psutil.Process()] + [psutil.Process(p) for p in pids]
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.005):
            total = 0
            for p in self.procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def done(self):
        self.stop.set()
        self.thread.join()
        return self.peak


def roundtrip(which, rounds):
    n = _ncpus()
    pool = _pool(which, n)
    try:
        for _ in range(min(2000, rounds)):
            pool.submit(noop).result()
        clock, out = time.perf_counter_ns, []
        for _ in range(rounds):
            t = clock()
            pool.submit(noop).result()
            out.append(clock() - t)
        return out
    finally:
        pool.shutdown()


def map_noop(which, count):
    n = _ncpus()
    pool = _pool(which, n)
    try:
        list(pool.map(noop, range(2000)))
        t = time.perf_counter_ns()
        got = sum(1 for _ in pool.map(noop, range(count), chunksize=1))
        return [time.perf_counter_ns() - t, got]
    finally:
        pool.shutdown()


def sha_map(which, blocks):
    n = _ncpus()
    pool = _pool(which, n)
    try:
        list(pool.map(digest, range(2 * n)))
        rss = _PeakRss(_workers_of(pool))
        t = time.perf_counter_ns()
        out = list(pool.map(digest, range(blocks), chunksize=8))
        wall = time.perf_counter_ns() - t
        return [wall, rss.done(), len(out)]
    finally:
        pool.shutdown()


CASES = {"roundtrip": roundtrip, "map_noop": map_noop, "sha_map": sha_map}


def run_case(case, which, n, timeout=600):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "benchmarks._pool_cases", case, which, str(n)],
                         capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    if out.returncode != 0:
        raise RuntimeError(f"pool benchmark {case}/{which} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _have_loky():
    try:
        import loky  # noqa: F401  (only asking whether it is installed)
    except ImportError:
        return False
    return True


def pool(quick, results):
    """The pool section of ``python -m benchmarks`` (``--only pool``)."""
    rounds = 3000 if quick else 20000
    count = 20000
    blocks = 1000 if quick else 4000
    others = ["ppe"] + (["loky"] if _have_loky() else [])
    label = {"kproc": "KthreadPoolExecutor", "ppe": "ProcessPoolExecutor (fork)",
             "loky": "loky"}
    with progress(3 * (1 + len(others)), "pool") as bar:
        rt_rows = []
        for which in ["kproc"] + others:
            rt_rows.append(summarize(label[which], run_case("roundtrip", which, rounds)))
            bar.update()
        tp = {}
        for which in ["kproc"] + others:
            elapsed, done = run_case("map_noop", which, count)
            tp[which] = done / elapsed * 1e9
            bar.update()
        sha = {}
        for which in ["kproc"] + others:
            sha[which] = run_case("sha_map", which, blocks)
            bar.update()
    table("Pool: submit(noop).result() round trip, same worker count", rt_rows,
          "KthreadPoolExecutor")
    ratio = rt_rows[1]["p50"] / rt_rows[0]["p50"]
    print(f"  kproc p50 is 1/{ratio:.1f} of ProcessPoolExecutor's (target: 1/30 or better: "
          f"{'PASS' if ratio >= 30 else 'MISS'})")
    print(f"\nPool: {count:,} no-op calls through map(chunksize=1) (higher is better)")
    for which in ["kproc"] + others:
        print(f"  {label[which]:<30} {tp[which]:>12,.0f} calls/s "
              f"{tp[which] / tp['kproc']:>8.3f}x")
    speed = tp["kproc"] / tp["ppe"]
    print(f"  kproc / ProcessPoolExecutor: {speed:.1f}x (target: 20x or better: "
          f"{'PASS' if speed >= 20 else 'MISS'})")
    print(f"\nPool: sha256 of {blocks:,} 64 KiB blocks (8 rounds each), map(chunksize=8), "
          f"{_ncpus()} workers (lower is better)")
    for which in ["kproc"] + others:
        wall, peak, _n = sha[which]
        print(f"  {label[which]:<30} wall {wall / 1e6:>9.1f} ms   peak RSS (caller + workers) "
              f"{peak / 2**20:>7.1f} MiB")
    results["pool"] = {"roundtrip": rt_rows, "map_noop_calls_per_s": tp,
                       "sha_map": {k: {"wall_ms": v[0] / 1e6, "peak_rss_mib": v[1] / 2**20}
                                   for k, v in sha.items()}}


if __name__ == "__main__" and len(sys.argv) <= 2:
    pool(sys.argv[1:] == ["--quick"], {})
elif __name__ == "__main__":
    # by module name, so the functions travel as benchmarks._pool_cases.*, not __main__.*
    from benchmarks import _pool_cases as _me
    print(json.dumps(_me.CASES[sys.argv[1]](sys.argv[2], int(sys.argv[3]))))
