"""Children of kthreadd forked without CPython's own fork handlers (``fork_child``).

With the C extension, kthreadd forks with ``_native.fork_bare`` (docs/design.md,
"Memory of a kthread"): what os.fork() would run in the child and that a
kthread can tell still happens.  Python's rule (os.register_at_fork): every
``after_in_child`` handler runs in the child; random is reseeded in each child,
so that two forks do not draw the same numbers; threading's native id is the
child's own.  On both hand-offs (a spare claimed, the create list) and, for the
reseed, also without the extension (os.fork).
"""

import pytest

import kproc
from fns import atfork
from helpers import wait_until

pytestmark = pytest.mark.timeout(40)


@pytest.fixture(params=["spare", "list"])
def handoff_rt(request, monkeypatch):
    """A runtime whose creates claim spares ("spare") or go through kthreadd ("list")."""
    if request.param == "list":
        monkeypatch.setenv("KPROC_SPARES", "0")
    rt = kproc.start()
    try:
        yield rt
    finally:
        rt.shutdown()


def _run(fn):
    """Run ``fn`` in a new kthread until it replied, then stop it.  Return: its reply."""
    done = kproc.Completion()
    task = kproc.kthread_run(fn, done, "atfork")
    kproc.wait_for_completion(done)
    return kproc.kthread_stop(task)


def test_kthreads_draw_different_random_numbers(handoff_rt):
    """random is reseeded in every kthread (Lib/random.py registers
    ``os.register_at_fork(after_in_child=_inst.seed)``): eight kthreads forked
    from one kthreadd draw eight different numbers."""
    _run(atfork.draw)                  # kthreadd imports the module for later forks
    draws = [_run(atfork.draw) for _ in range(8)]
    assert len(set(draws)) == len(draws), draws


def test_user_fork_handler_runs_in_kthread(handoff_rt):
    """An ``after_in_child`` handler registered by a module kthreadd imported runs
    in each kthread forked since (os.register_at_fork: "called in the child
    process after fork")."""
    _run(atfork.handler_ran)           # forked before kthreadd imported the module
    wait_until(lambda: _run(atfork.handler_ran) == 1, 10.0,
               message="the module's fork handler never ran in a kthread")
    assert _run(atfork.handler_ran) == 1


def test_native_thread_id_is_the_kthreads_own(handoff_rt):
    """threading.get_native_id() in a kthread is its own thread id (its pid), not
    kthreadd's (a check: _thread.get_native_id() asks the kernel each time)."""
    assert _run(atfork.native_id) == 1
