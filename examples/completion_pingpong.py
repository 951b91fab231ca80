"""A completion ping-pong: the caller and a kthread on another CPU hand a turn
back and forth through two completions (futexes in shared memory), and the
round trip is timed.

Run: python examples/completion_pingpong.py [ROUNDS]
"""

import statistics
import sys
import time

import kproc


def pong(data):
    """threadfn: answer every ping until asked to stop."""
    ping, pong_done = data
    while True:
        kproc.wait_for_completion_interruptible(ping)   # kthread_stop() ends this wait
        if kproc.kthread_should_stop():
            return 0
        kproc.complete(pong_done)


def main(rounds):
    with kproc.start():
        ping, pong_done = kproc.Completion(), kproc.Completion()
        cpus = sorted(kproc.cpu_online_mask())
        task = kproc.kthread_run_on_cpu(pong, (ping, pong_done), cpus[-1], "pong/%u")
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            kproc.complete(ping)
            kproc.wait_for_completion(pong_done)
            times.append(time.perf_counter_ns() - t0)
        print(f"{rounds} round trips with {task.name}: "
              f"median {statistics.median(times) / 1000:.1f} µs, "
              f"best {min(times) / 1000:.1f} µs")
        print("pong returned", kproc.kthread_stop(task))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
