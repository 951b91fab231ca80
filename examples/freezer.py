"""The freezer: freezable kthreads stop at their next try_to_freeze() while
freeze_kthreads() is in force (the kernel does this around suspend), and go on
after thaw_kthreads(); a kthread that is not freezable runs on.

Run: python examples/freezer.py
"""

import kproc


def counter(data):
    """threadfn: count in a shared completion every 10 ms, freezing when asked."""
    ticks, freezable = data
    if freezable:
        kproc.set_freezable()
    while True:
        stop, _frozen = kproc.kthread_freezable_should_stop()  # freezes here if freezing
        if stop:
            return 0
        kproc.complete(ticks)
        kproc.msleep_interruptible(10)


def ticking(ticks):
    """True if the kthread counting in ``ticks`` ticks within 0.5 s."""
    kproc.reinit_completion(ticks)
    return kproc.wait_for_completion_timeout(ticks, 0.5) > 0


def main():
    with kproc.start():
        cold, warm = kproc.Completion(), kproc.Completion()
        freezable = kproc.kthread_run(counter, (cold, True), "freezable")
        other = kproc.kthread_run(counter, (warm, False), "not-freezable")
        kproc.wait_for_completion(cold)
        kproc.wait_for_completion(warm)

        kproc.freeze_kthreads(timeout=5.0)              # returns once all are frozen
        print("frozen:", kproc.task_state(freezable))
        print("freezable ticks:", ticking(cold), "  the other ticks:", ticking(warm))

        kproc.thaw_kthreads()
        print("thawed, freezable ticks:", ticking(cold))
        print("stopped:", kproc.kthread_stop(freezable), kproc.kthread_stop(other))


if __name__ == "__main__":
    main()
