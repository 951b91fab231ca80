"""threadfns for tests/test_fork_bare.py; importing this module registers a fork
handler (in kthreadd too, where a threadfn's module is imported)."""

import os
import random
import threading

import kproc

RAN_IN = []        # pids of the processes in which the after_in_child handler ran


def _child() -> None:
    RAN_IN.append(os.getpid())


os.register_at_fork(after_in_child=_child)


def _reply(value, done):
    kproc.complete(done)
    while not kproc.kthread_should_stop():
        kproc.set_current_state(kproc.TASK_INTERRUPTIBLE)
        if not kproc.kthread_should_stop():
            kproc.schedule()
        kproc.set_current_state(kproc.TASK_RUNNING)
    return value


def draw(done):
    """threadfn: a 62-bit draw of random (the kthread's own state)."""
    return _reply(random.getrandbits(62), done)


def handler_ran(done):
    """threadfn: 1 if the module's after_in_child handler ran in this process."""
    return _reply(int(os.getpid() in RAN_IN), done)


def native_id(done):
    """threadfn: 1 if threading's native id is this process's own."""
    return _reply(int(threading.get_native_id() == os.getpid()), done)
