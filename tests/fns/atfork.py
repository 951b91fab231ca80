"""threadfns for tests/test_fork_bare.py; importing this module registers fork
handlers (in kthreadd too, where a threadfn's module is imported)."""

import os
import random
import threading

import kproc

RAN_IN = []        # pids of the processes in which the after_in_child handler ran
COUNTS = {"before": 0, "parent": 0}     # as kthreadd had them when it forked us


def _before() -> None:
    COUNTS["before"] += 1


def _parent() -> None:
    COUNTS["parent"] += 1


def _child() -> None:
    RAN_IN.append(os.getpid())


os.register_at_fork(before=_before, after_in_parent=_parent, after_in_child=_child)


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


def handler_runs(done):
    """threadfn: how many times the module's after_in_child handler ran in this process."""
    return _reply(RAN_IN.count(os.getpid()), done)


def parent_handlers(done):
    """threadfn: 1 if kthreadd ran ``before`` once more than ``after_in_parent`` when it
    forked this process (each before its fork, the other after it), and at least once."""
    return _reply(int(COUNTS["before"] == COUNTS["parent"] + 1 >= 1), done)


def native_id(done):
    """threadfn: 1 if threading's native id is this process's own."""
    return _reply(int(threading.get_native_id() == os.getpid()), done)
