"""A threadfn that imports nothing: what it sees in ``sys.modules`` is kthreadd's."""

import os
import sys


def write_modules(path):
    """Write the kthread's module names to ``path`` (whole, by rename), return 0."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(sorted(sys.modules)))
    os.replace(tmp, path)
    return 0


def api_imports(path):
    """Run the kthread API a threadfn commonly calls, then write to ``path`` the
    modules that this loaded after the fork (none, if kthreadd preloaded them)."""
    before = set(sys.modules)
    import kproc                      # the face: loaded by kthreadd already
    me = kproc.current()
    kproc.kthread_should_stop()
    kproc.kthread_should_park()
    kproc.kthread_data(me)
    kproc.get_kthread_comm(me)
    done = kproc.Completion()
    kproc.complete(done)
    kproc.wait_for_completion(done)
    kproc.wait_for_completion_timeout(kproc.Completion(), 0.001)
    kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
    kproc.schedule_timeout(0.001)
    kproc.msleep(1)
    kproc.try_to_freeze()
    kproc.cpu_online_mask()
    new = sorted(set(sys.modules) - before)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(new))
    os.replace(tmp, path)
    return 0
