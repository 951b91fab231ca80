"""A CPU-hotplug experiment on a fake sysfs tree (no root needed): per-CPU
threads (smpboot) that park when their CPU goes down and come back bound to it
when it comes up, as the kernel's ksoftirqd/N do.

On a fake tree the write goes to the tree's cpuN/online instead of the real
one, and kproc applies affinities only to CPUs that are online in both (so a
thread of an offline fake CPU really loses its CPU).  As root, with a
hot-pluggable CPU1, drop ``sysfs_root=`` to do the same on the real /sys.

Run: python examples/hotplug_fake.py
"""

import os
import tempfile
import time

import kproc


def should_run(cpu):
    return False                      # nothing to do: the thread sleeps between parks


def run(cpu):
    pass


def park(cpu):
    print(f"  demo/{cpu}: parking, CPU {cpu} is going down", flush=True)


def unpark(cpu):
    print(f"  demo/{cpu}: unparked on CPU {cpu}", flush=True)


def main():
    root = kproc.fake_sysfs(os.path.join(tempfile.mkdtemp(), "sys"), possible=4)
    cpu = 1
    with kproc.start(sysfs_root=root):
        ht = kproc.SmpHotplugThread(should_run, run, "demo/%u", park=park, unpark=unpark)
        kproc.smpboot_register_percpu_thread(ht)        # one thread per online CPU
        print("online:", sorted(kproc.cpu_online_mask()),
              "threads:", [ht.task(c).name for c in sorted(kproc.cpu_online_mask())])
        # smpboot.c calls park() only for a thread that has run once: wait until
        # each sleeps in its loop (should_run() said no) before taking a CPU down.
        for c in kproc.cpu_online_mask():
            while kproc.task_state(ht.task(c)) != kproc.TASK_INTERRUPTIBLE:
                time.sleep(0.001)

        print(f"cpu_down({cpu}) returned", kproc.cpu_down(cpu))  # demo/1 parks, then the write
        print("online:", sorted(kproc.cpu_online_mask()))
        print(f"  {ht.task(cpu).name} is {kproc.task_state(ht.task(cpu))}")

        print(f"cpu_up({cpu}) returned", kproc.cpu_up(cpu))      # the write, then demo/1 unparks
        print("online:", sorted(kproc.cpu_online_mask()))
        task = ht.task(cpu)
        print(f"  {task.name} runs on CPUs {os.sched_getaffinity(task.pid)}")
        kproc.smpboot_unregister_percpu_thread(ht)             # stops every demo/N


if __name__ == "__main__":
    main()
