"""Module-level threadfns and payloads of the fault tests (kthreads import them by reference)."""

import os

import kproc


class ExitOnUnpickle:
    """A callable whose unpickling calls os._exit(3): only a kthread may ever run it."""

    def __call__(self, data):
        return 0

    def __reduce__(self):
        return (os._exit, (3,))


def explode():
    raise ValueError("this payload cannot be loaded")


class Unloadable:
    """Data whose unpickling raises: the kthread cannot load it."""

    def __reduce__(self):
        return (explode, ())


def fork_and_return(args):
    """Fork; the child returns 99 from threadfn at once, the kthread returns 7 later."""
    forked, go = args
    pid = os.fork()
    if pid == 0:
        return 99
    os.waitpid(pid, 0)
    kproc.complete(forked)
    kproc.wait_for_completion(go)
    return 7


def fork_and_raise(args):
    """Fork; the child raises out of threadfn, the kthread returns 5 later."""
    forked, go = args
    pid = os.fork()
    if pid == 0:
        raise RuntimeError("raised in a forked child")
    os.waitpid(pid, 0)
    kproc.complete(forked)
    kproc.wait_for_completion(go)
    return 5


def stop_target(args):
    """Stop ``target`` (a kthread that ignores stop until ``go``): blocks in kthread_stop()."""
    started, target = args
    kproc.complete(started)
    return kproc.kthread_stop(target)


def wait_go_then_stop(args):
    """Sleep uninterruptibly on ``go``, then loop until stopped."""
    started, go = args
    kproc.complete(started)
    kproc.wait_for_completion(go)
    return 3


def cancel_work(args):
    """Cancel ``work`` (which is running and blocked): blocks in cancel_work_sync()."""
    started, work = args
    kproc.complete(started)
    return int(kproc.kthread_cancel_work_sync(work))


def flush_work(args):
    """Flush ``work``: blocks in kthread_flush_work() while it runs."""
    started, work = args
    kproc.complete(started)
    kproc.kthread_flush_work(work)
    return 0
