"""Park and unpark: a kthread that parks when asked (kthread_should_park ->
kthread_parkme), the caller parking it, looking at its state, unparking it and
stopping it.

Run: python examples/park_unpark.py
"""

import kproc


def ticker(ticks):
    """threadfn: count, sleeping 10 ms between counts; park when asked."""
    while not kproc.kthread_should_stop():
        if kproc.kthread_should_park():
            kproc.kthread_parkme()           # sleeps in TASK_PARKED until unparked
            continue
        kproc.complete(ticks)
        kproc.msleep_interruptible(10)
    return 0


def main():
    with kproc.start():
        ticks = kproc.Completion()
        task = kproc.kthread_run(ticker, ticks, "ticker")
        kproc.wait_for_completion(ticks)               # it runs
        print("running:", kproc.task_state(task))

        print("kthread_park() returned", kproc.kthread_park(task))   # 0: parked
        print("parked: ", kproc.task_state(task))
        kproc.reinit_completion(ticks)
        assert not kproc.wait_for_completion_timeout(ticks, 0.1)     # no tick while parked

        kproc.kthread_unpark(task)
        kproc.wait_for_completion(ticks)               # ticking again
        print("unparked:", kproc.task_state(task))
        print("kthread_stop() returned", kproc.kthread_stop(task))


if __name__ == "__main__":
    main()
