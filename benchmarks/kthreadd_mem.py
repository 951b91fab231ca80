"""``python benchmarks/kthreadd_mem.py [-v]``: kthreadd's memory and modules (issue #12).

Under the test lock.  Starts a runtime, reads kthreadd's ``/proc/PID/smaps_rollup``
(KiB of Rss, Anonymous, Private_Dirty: what every fork copies page tables for and every
kthread's exit tears down), then has a kthread write its ``sys.modules`` (kthreadd's
modules, and the threadfn's module, which imports only ``os`` and ``sys``).  ``-v``
lists the modules.  See "A lean kthreadd" in docs/design.md.
"""

import os
import sys
import tempfile
import time

import kproc
from bare_fns import write_modules


def rollup(pid):
    """{field: KiB} of ``/proc/PID/smaps_rollup``."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp, kproc.start() as rt:
        time.sleep(0.5)                 # the first batch of spares forked
        mem = rollup(rt.kthreadd_pid)
        path = os.path.join(tmp, "modules")
        task = kproc.kthread_run(write_modules, path, "modules")
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        kproc.kthread_stop(task)
        with open(path) as f:
            modules = f.read().split()
    print(f"kthreadd: Rss {mem['Rss']} KiB, Anonymous {mem['Anonymous']} KiB, "
          f"Private_Dirty {mem['Private_Dirty']} KiB; a kthread's modules: {len(modules)}")
    if "-v" in sys.argv:
        print(" ".join(modules))


if __name__ == "__main__":
    main()
