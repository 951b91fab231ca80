"""Children of kthreadd forked bare, without CPython's own fork handlers (``fork``).

With the C extension, kthreadd forks every child with ``Mem.fork_children``
(native/forkloop.c; spares in batches, with no Python between the forks):
what os.fork() would run and that a kthread can tell still happens.  Python's
rule (os.register_at_fork): "before" runs before the fork and "after_in_parent"
after it, in the parent; every "after_in_child" handler runs in the child,
once; random is reseeded in each child (Lib/random.py's own handler), so that
two forks do not draw the same numbers; threading's native id is the child's
own.  On both hand-offs (a spare claimed, the create list) and without the
extension (os.fork).
"""

import psutil
import pytest

import kproc
from kproc._core import layout as L
from fns import atfork
from helpers import wait_until

pytestmark = pytest.mark.timeout(40)

POOL = [L.HEADER.spares + 4 * e for e in range(L.SPARE_POOL)]


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


def test_two_kthreads_of_one_batch_draw_different_numbers(monkeypatch):
    """Two spares of one batch (forked in a row, no Python run in kthreadd
    between the two forks) still have random states of their own: each child
    is reseeded after its fork."""
    monkeypatch.setenv("KPROC_SPARES", "4")
    with kproc.start(preload=["fns.atfork"]) as rt:
        mem = rt.arena.mem
        # The first batch: the whole pool at once (every entry was free).
        wait_until(lambda: all(mem.load32(off) == L.SPARE_READY for off in POOL[:4]), 5.0,
                   message="the first batch of spares never became ready")
        batch = {p.pid for p in psutil.Process(rt.kthreadd_pid).children()}
        dones = [kproc.Completion(), kproc.Completion()]
        tasks = [kproc.kthread_create(atfork.draw, done, "draw%d" % i)
                 for i, done in enumerate(dones)]
        assert {t.pid for t in tasks} <= batch, "the two kthreads were not of the batch"
        for t, done in zip(tasks, dones):
            kproc.wake_up_process(t)
            kproc.wait_for_completion(done)
        a, b = (kproc.kthread_stop(t) for t in tasks)
        assert a != b


def test_user_fork_handler_runs_exactly_once_in_each_kthread(handoff_rt):
    """An ``after_in_child`` handler registered by a module kthreadd imported runs
    exactly once in each kthread forked since (os.register_at_fork: "called in
    the child process after fork"; never twice, never zero times), whether it
    was a spare of a batch or forked for the create list."""
    _run(atfork.handler_runs)          # forked before kthreadd imported the module
    wait_until(lambda: _run(atfork.handler_runs) == 1, 10.0,
               message="the module's fork handler never ran in a kthread")
    counts = [_run(atfork.handler_runs) for _ in range(10)]
    assert counts == [1] * 10


def test_parent_fork_handlers_run_around_each_fork(handoff_rt):
    """``before`` ran in kthreadd before a kthread's fork and ``after_in_parent``
    after it (so a kthread, a copy of kthreadd taken between the two, sees one
    more ``before`` than ``after_in_parent``): once per batch of spares, as
    os.fork() runs them once per fork."""
    _run(atfork.parent_handlers)
    wait_until(lambda: _run(atfork.parent_handlers) == 1, 10.0,
               message="the fork handlers never ran around a kthread's fork")
    assert [_run(atfork.parent_handlers) for _ in range(6)] == [1] * 6


def test_native_thread_id_is_the_kthreads_own(handoff_rt):
    """threading.get_native_id() in a kthread is its own thread id (its pid), not
    kthreadd's (a check: _thread.get_native_id() asks the kernel each time)."""
    assert _run(atfork.native_id) == 1


def test_kthreadd_with_a_thread_of_its_own_forks_as_os_fork(monkeypatch):
    """A module kthreadd imported started a thread there: a kthread forked since
    knows only its own thread (fork(2) copies the calling thread alone, and
    CPython's after-fork handler drops the others' states, Modules/posixmodule.c
    PyOS_AfterFork_Child; a bare fork would leave the other thread's state in
    the child's threading module), whether a spare or forked for the list."""
    for spares in ("4", "0"):
        monkeypatch.setenv("KPROC_SPARES", spares)
        with kproc.start(preload=["fns.atfork_thread"]):
            from fns import atfork_thread
            # Spares forked before the import finished may be bare: drain them.
            counts = [_run(atfork_thread.threads_seen) for _ in range(2 * L.SPARE_POOL)]
            assert counts[-4:] == [1] * 4, (spares, counts)
