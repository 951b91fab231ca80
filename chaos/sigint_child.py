"""The owner a SIGINT storm hits (run by ``chaos.sigint``; not an experiment).

Loops over blocking calls until stdin says "done", each call in a try that
swallows KeyboardInterrupt (raised only inside kproc's calls: ``_on_sigint``);
then runs a sanity workload and prints "sane".
"""

from __future__ import annotations

import os
import select
import signal
import sys
from types import FrameType

import kproc

from . import fns


def _cycle() -> None:
    started = kproc.Completion()
    t = kproc.kthread_run(fns.parker, started, "si-parker")
    kproc.wait_for_completion(started)
    kproc.kthread_park(t)
    kproc.kthread_unpark(t)
    kproc.kthread_stop(t)
    w = kproc.kthread_create_worker(0, "si-worker")
    work = kproc.KthreadWork(fns.work_noop)
    kproc.kthread_queue_work(w, work)
    kproc.kthread_flush_work(work)
    kproc.kthread_queue_work(w, work)
    kproc.kthread_cancel_work_sync(work)
    kproc.kthread_flush_worker(w)
    kproc.kthread_destroy_worker(w)
    c = kproc.Completion()
    kproc.complete(c)
    kproc.wait_for_completion_timeout(c, 0.01)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt where a kproc call (or the cycle of them) runs.

    A SIGINT landing in this module's own loop, outside the try that catches
    it (Python checks signals at the loop's backward jump), is dropped: what is
    tested is Ctrl-C inside kproc's calls, not this loop's.
    """
    f = frame
    while f is not None:
        if f.f_code.co_name == "_cycle" or f"{os.sep}kproc{os.sep}" in f.f_code.co_filename:
            raise KeyboardInterrupt
        f = f.f_back


def main() -> int:
    backend = sys.argv[1]
    signal.signal(signal.SIGINT, _on_sigint)
    kproc.start(backend=backend)
    print("ready", flush=True)
    n = 0
    while True:
        try:
            if select.select([sys.stdin], [], [], 0)[0]:
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # the storm is over
                break
            if n % 20 == 19:
                kproc.shutdown()
                kproc.start(backend=backend)
            else:
                _cycle()
        except KeyboardInterrupt:
            pass
        except Exception as exc:       # an error other than the interruption: report
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        n += 1
    sys.stdin.readline()
    ok = fns.sane_workload(backend, "si")
    kproc.shutdown()
    print("sane" if ok else "not sane", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
