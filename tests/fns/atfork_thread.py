"""A module that starts a thread when it is imported (preloaded in kthreadd by
tests/test_fork_bare.py): kthreadd is then no longer single-threaded."""

import threading

import kproc

_forever = threading.Event()
threading.Thread(target=_forever.wait, name="preloaded", daemon=True).start()


def threads_seen(done):
    """threadfn: how many threads this kthread's threading module knows of."""
    kproc.complete(done)
    while not kproc.kthread_should_stop():
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if not kproc.kthread_should_stop():
            kproc.schedule()
        kproc.set_current_state(kproc.TASK_RUNNING)
    return threading.active_count()
