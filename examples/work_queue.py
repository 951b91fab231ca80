"""A work queue with delayed works and cancel: a kthread worker runs works in
its own process, delayed works wait for their timer, one is moved earlier with
kthread_mod_delayed_work() and one is cancelled before its timer fires.

Run: python examples/work_queue.py
"""

import time

import kproc

T0 = time.monotonic()


def report(work):
    """A work's function: runs in the worker's process; work.data is its payload."""
    print(f"  {work.data:<28} ran in the worker after {time.monotonic() - T0:.2f} s",
          flush=True)


def main():
    global T0
    with kproc.start():
        worker = kproc.kthread_create_worker(0, "kworker/%s", "demo")
        T0 = time.monotonic()
        soon = kproc.KthreadDelayedWork(report, "delayed 0.2 s")
        moved = kproc.KthreadDelayedWork(report, "delayed 5 s, moved to 0.4 s")
        cancelled = kproc.KthreadDelayedWork(report, "delayed 0.3 s, cancelled")
        kproc.kthread_queue_delayed_work(worker, soon, 0.2)           # delays in seconds
        kproc.kthread_queue_delayed_work(worker, moved, 5.0)
        kproc.kthread_queue_delayed_work(worker, cancelled, 0.3)
        kproc.kthread_queue_work(worker, kproc.KthreadWork(report, "queued at once"))

        print("cancelled before its timer:", kproc.kthread_cancel_delayed_work_sync(cancelled))
        kproc.kthread_mod_delayed_work(worker, moved, 0.4)           # 5 s -> 0.4 s
        kproc.kthread_flush_work(moved)              # waits through its timer and its run
        print("nothing left to cancel:", kproc.kthread_cancel_delayed_work_sync(moved))
        print("works executed:", worker.executed)
        kproc.kthread_destroy_worker(worker)


if __name__ == "__main__":
    main()
