"""Pinned workers returning results: one kthread per online CPU, each bound to
its CPU, each counting the primes of its share of a range.  Each ends with
kthread_complete_and_exit(done, count), and kthread_stop() then returns the
count.  (Stopping a kthread that has not reached its threadfn yet returns
-EINTR instead, as in the kernel: wait for it first.)

Run: python examples/pinned_workers.py
"""

import os

import kproc


def count_primes(data):
    """threadfn: runs in the kthread's own process, bound to one CPU."""
    (start, stop), done = data
    found = 0
    for n in range(max(start, 2), stop):
        if all(n % d for d in range(2, int(n ** 0.5) + 1)):
            found += 1
    kproc.kthread_complete_and_exit(done, found)   # found: what kthread_stop() returns


def main():
    limit = 200_000
    with kproc.start():
        cpus = sorted(kproc.cpu_online_mask())
        step = limit // len(cpus) + 1
        tasks, dones = [], []
        for i, cpu in enumerate(cpus):
            span = (i * step, min(limit, (i + 1) * step))
            done = kproc.Completion()
            task = kproc.kthread_create_on_cpu(count_primes, (span, done), cpu, "primes/%u")
            tasks.append(task)            # created asleep, already bound to its CPU
            dones.append(done)
        for task in tasks:
            print(f"{task.name}: pid {task.pid} runs on CPUs {os.sched_getaffinity(task.pid)}")
            kproc.wake_up_process(task)
        for done in dones:
            kproc.wait_for_completion(done)
        total = sum(kproc.kthread_stop(task) for task in tasks)   # each one's result
    print(f"{total} primes below {limit}")
    assert total == 17984


if __name__ == "__main__":        # kthreadd imports this file: keep the work behind the guard
    main()
