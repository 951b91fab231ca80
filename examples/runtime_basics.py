"""The runtime: start one with chosen sizes, see what it runs on, and what the
kernel's error conventions become (an exception for an ERR_PTR, a negative
errno returned as is, a KernelWarning for a WARN_ON).

Run: python examples/runtime_basics.py
"""

import errno
import warnings

import kproc


def idle(started):
    """threadfn: say it runs, then sleep until kthread_stop()."""
    kproc.complete(started)
    while not kproc.kthread_should_stop():
        kproc.schedule_timeout_interruptible(1.0)
    return 7


def main():
    with kproc.start(max_kthreads=64, max_works=256) as rt:
        print(f"kthreadd pid {rt.kthreadd_pid}, {rt.backend} backend")
        try:
            kproc.start()                               # one runtime per process
        except kproc.KthreadError as exc:
            print("a second start():", errno.errorcode[exc.errno])

        started = kproc.Completion()
        task = kproc.kthread_run(idle, started, "idle/%d", 1)
        kproc.wait_for_completion(started)   # stopped before it ran, it would return -EINTR
        print(f"{task.name} (pid {task.pid}) runs")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            kproc.kthread_bind(task, 0)          # too late: it already runs (WARN_ON)
        print("kthread_bind() after the first wake:", seen[0].category.__name__)
        print("kthread_stop() returned", kproc.kthread_stop(task))
    print("shut down: kthreadd and its kthreads are gone")


if __name__ == "__main__":
    main()
