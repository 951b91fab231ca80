"""``python benchmarks/pool_profile.py [cpu|caller|worker|rtcaller]``: where a pool's time goes.

Run under the test lock (``flock /tmp/kproc-test.lock .venv/bin/python
benchmarks/pool_profile.py cpu``).  Modes, each on a 2-worker KthreadPoolExecutor:

* ``cpu``: three maps of 20,000 no-ops: calls/s and wall per call, the caller thread's
  CPU per call (getrusage: wall above it means the caller waits off its CPU) and each
  worker's (``/proc/<pid>/stat``, over all the map's calls), then the p50 of 3,000
  ``submit(noop).result()`` round trips;
* ``caller``: cProfile of the caller over one map;
* ``worker``: cProfile inside the workers (enabled and read back by pool calls);
* ``rtcaller``: cProfile of the caller over 5,000 round trips.
"""

import cProfile
import io
import os
import pstats
import resource
import sys
import time

import kproc
from kproc._bench.pool import noop

N = 20_000
_prof = None


def worker_profile_start():
    """A pool call: start profiling this worker (once)."""
    global _prof
    if _prof is None:
        _prof = cProfile.Profile()
        _prof.enable()


def worker_profile_stop():
    """A pool call: stop profiling this worker; return the table (or "")."""
    global _prof
    if _prof is None:
        return ""
    _prof.disable()
    out = io.StringIO()
    pstats.Stats(_prof, stream=out).sort_stats("tottime").print_stats(14)
    _prof = None
    return out.getvalue()


def cpu_s(pid):
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(mode):
    with kproc.start():
        pool = kproc.KthreadPoolExecutor(2)
        pids = [w.task.pid for w in pool._pool.engine.workers]
        list(pool.map(noop, range(2000)))
        if mode == "cpu":
            for _ in range(3):
                c0 = [cpu_s(p) for p in pids]
                r0 = resource.getrusage(resource.RUSAGE_THREAD)
                t = time.perf_counter()
                sum(1 for _ in pool.map(noop, range(N)))
                el = time.perf_counter() - t
                r1 = resource.getrusage(resource.RUSAGE_THREAD)
                c1 = [cpu_s(p) for p in pids]
                cc = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
                # wall well above the caller's CPU: it is off its CPU (preempted)
                print(f"map {N / el:,.0f}/s ({el / N * 1e6:.2f} us/call of wall); caller "
                      f"thread {cc / N * 1e6:.2f} us/call; "
                      f"workers {[f'{(b - a) / N * 1e6:.2f}' for a, b in zip(c0, c1)]} us/call")
            ts = []
            for _ in range(3000):
                t0 = time.perf_counter_ns()
                pool.submit(noop).result()
                ts.append(time.perf_counter_ns() - t0)
            ts.sort()
            print("round trip p50", ts[len(ts) // 2] / 1000, "us")
        elif mode == "caller":
            pr = cProfile.Profile()
            pr.enable()
            sum(1 for _ in pool.map(noop, range(N)))
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(18)
        elif mode == "worker":
            for f in [pool.submit(worker_profile_start) for _ in range(8)]:
                f.result()
            sum(1 for _ in pool.map(noop, range(N)))
            for text in {pool.submit(worker_profile_stop).result() for _ in range(8)}:
                print(text)
        elif mode == "rtcaller":
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(5000):
                pool.submit(noop).result()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(15)
        pool.shutdown()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
