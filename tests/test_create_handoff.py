"""The two create hand-offs, each under faults: a spare claimed by the creator
through the arena's spare pool, and the create list served by kthreadd.

Kernel rules (kernel/kthread.c, 6.15): a creator that gives up or dies leaves
no kthread nobody holds (``__kthread_create_on_node``: ``xchg(&create->done,
NULL)`` and the kthread's own check in ``kthread()``); a create that cannot
be served ends its creator's wait (``-EINTR``/``-ENOMEM``).
"""

import errno
import os
import signal
import sys
import textwrap
import threading
import time

import psutil
import pytest

import kproc
from kproc._core import layout as L
from kproc._core.blobs import write_blob
from kproc._core.funcref import pickle_data, pickle_function
from kproc._kthread.spares import claim_spare
from fns import kthread as kfuncs
from helpers import live_kthreads, run_started, wait_until

pytestmark = pytest.mark.timeout(40)

POOL = [L.HEADER.spares + 4 * e for e in range(L.SPARE_POOL)]
# Tests of the spare hand-off alone run with the "spare" form of the fixture only.
SPARE_ONLY = pytest.mark.parametrize("handoff", ["spare"], indirect=True)


@pytest.fixture(params=["spare", "list"])
def handoff(request, monkeypatch):
    """(runtime, hand-off): "spare" keeps the default spares (a create claims one),
    "list" runs with KPROC_SPARES=0 (every create goes through kthreadd)."""
    if request.param == "list":
        monkeypatch.setenv("KPROC_SPARES", "0")
    rt = kproc.start()
    try:
        if request.param == "spare":
            wait_until(lambda: _ready(rt), 5.0, message="no spare became ready")
        yield rt, request.param
    finally:
        rt.shutdown()


def _ready(rt):
    return [off for off in POOL if rt.arena.mem.load32(off) == L.SPARE_READY]


def _claimed(rt):
    return [off for off in POOL if rt.arena.mem.load32(off) >= L.SPARE_CLAIMED]


def _spares(rt):
    out = []
    for p in psutil.Process(rt.kthreadd_pid).children():
        try:
            if p.name() == "kproc-spare":
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _stop_kthreadd_with_a_ready_spare(rt):
    """SIGSTOP kthreadd at a moment a spare is ready and none is being forked, so a
    create needs no kthreadd and the spares listed now are all there are until
    SIGCONT.  A spare already forked turns its FORKING entry READY by itself; an entry
    of a batch kthreadd was stopped in the middle of stays FORKING until it goes on,
    and a ready spare may be discarded just before the stop: then kthreadd runs on a
    moment and is stopped again."""
    mem, deadline = rt.arena.mem, time.monotonic() + 10.0

    def settled():
        words = [mem.load32(off) for off in POOL]
        return L.SPARE_READY in words and L.SPARE_FORKING not in words

    while True:
        wait_until(lambda: _ready(rt), 5.0)
        os.kill(rt.kthreadd_pid, signal.SIGSTOP)
        try:
            wait_until(settled, 0.5)
            return
        except AssertionError:
            os.kill(rt.kthreadd_pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "no moment with a spare ready and none forking"
        time.sleep(0.02)


def _freeze_creation(rt, kind):
    """SIGSTOP whoever would serve the next create: kthreadd and, for a spare, every
    spare (once each forked spare has renamed itself).  Return: their pids."""
    if kind != "spare":
        os.kill(rt.kthreadd_pid, signal.SIGSTOP)
        return [rt.kthreadd_pid]
    _stop_kthreadd_with_a_ready_spare(rt)
    pids = [rt.kthreadd_pid]
    for pid in _spares(rt):
        try:
            os.kill(pid, signal.SIGSTOP)
            pids.append(pid)
        except ProcessLookupError:
            pass                               # a discarded one, exiting
    return pids


def _dead(pid):
    """True once ``pid`` has exited (gone, or a zombie not reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _thaw(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _asked(rt, kind):
    return _claimed(rt) if kind == "spare" else rt.arena.hget("create_head") != 0


def _held_slots(rt):
    """Task slots neither free nor dead-and-unpinned: held by a lost create."""
    mem, T, out = rt.arena.mem, L.TASK, []
    for idx in range(rt.arena.params.max_kthreads):
        base = rt.arena.task_off(idx)
        slot = mem.load32(base + T.slot)
        if slot not in (L.SLOT_FREE, L.SLOT_DEAD) or \
                slot == L.SLOT_DEAD and mem.load32(base + T.refs):   # a free slot is zeroed
            out.append((idx, slot, mem.load32(base + T.refs), mem.load32(base + T.handoff),
                        mem.load32(base + T.state)))
    return out


def _assert_abandoned_cleanly(rt, creator, orphan_message):
    """The killed creator kthread ended with EOWNERDEAD, and its abandoned create
    left no live kthread and no held slot."""
    assert kproc.kthread_stop(creator) == -errno.EOWNERDEAD
    wait_until(lambda: not live_kthreads(rt), 3.0, message=orphan_message)
    _wait_no_slot_held(rt)


def _create_in_thread(name):
    """Start a kthread_create() in a thread; return the thread and the list
    that collects the errno of the KthreadError it ends with."""
    errors = []

    def create():
        try:
            kproc.kthread_create(kfuncs.ret_value, 0, name)
        except kproc.KthreadError as exc:
            errors.append(exc.errno)
    th = threading.Thread(target=create)
    th.start()
    return th, errors


def _wait_no_slot_held(rt):
    try:
        wait_until(lambda: not _held_slots(rt), 2.0)
    except AssertionError:
        assert _held_slots(rt) == [], "(index, slot, refs, handoff, state) of slots held"


@SPARE_ONLY
def test_a_create_with_a_spare_ready_is_served_by_that_spare(handoff):
    rt, kind = handoff
    _stop_kthreadd_with_a_ready_spare(rt)          # kthreadd takes no part in it
    try:
        spares = set(_spares(rt))
        started = kproc.Completion()
        t = kproc.kthread_create(kfuncs.time_sleep, (0, started), "from-spare")
        assert t.pid in spares
        kproc.wake_up_process(t)
        kproc.wait_for_completion(started)
        assert kproc.kthread_stop(t) == 9
    finally:
        os.kill(rt.kthreadd_pid, signal.SIGCONT)
    assert psutil.Process(t.pid).ppid() == rt.kthreadd_pid if psutil.pid_exists(t.pid) \
        else True


def test_interrupted_create_is_abandoned_and_leaves_no_orphan(handoff):
    rt, kind = handoff
    frozen = _freeze_creation(rt, kind)

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            kproc.kthread_create(kfuncs.ret_value, 0, "abandoned")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        _thaw(frozen)
    wait_until(lambda: not live_kthreads(rt), 2.0)
    _wait_no_slot_held(rt)
    t = kproc.kthread_create(kfuncs.ret_value, 0, "next")     # the runtime still works
    assert kproc.kthread_stop(t) == -errno.EINTR


def test_creator_killed_while_waiting_leaves_no_orphan(handoff):
    """kthreadd (and the spares) are stopped *before* the creator asks, so its
    request is certainly unserved when the creator dies."""
    rt, kind = handoff
    go = kproc.Completion()
    creator = kproc.kthread_run(kfuncs.create_and_hang, (go,), "creator")
    wait_until(lambda: kind == "list" or _ready(rt), 5.0)
    frozen = _freeze_creation(rt, kind)
    try:
        kproc.complete(go)
        wait_until(lambda: _asked(rt, kind), 2.0)
        os.kill(creator.pid, signal.SIGKILL)
    finally:
        _thaw(frozen)
    _assert_abandoned_cleanly(rt, creator, "an abandoned create produced an orphan kthread")


@pytest.mark.parametrize("handoff", ["list"], indirect=True)
def test_creator_killed_between_queueing_and_waking_kthreadd_holds_no_slot(handoff):
    """A creator SIGKILLed after it queued its request but before it woke
    kthreadd (kernel __kthread_create_on_node: list_add_tail then
    wake_up_process(kthreadd_task), a window a fatal signal cannot cut, so
    kthreadd always sees the request): the reap of the creator serves the list
    and frees the abandoned slot at once, with no other create to wake kthreadd."""
    rt, kind = handoff
    started = kproc.Completion()
    creator = kproc.kthread_run(kfuncs.create_then_die_before_the_wake, started, "creator")
    kproc.wait_for_completion(started)
    assert kproc.kthread_stop(creator) == -errno.EOWNERDEAD
    assert creator.exit_signal == signal.SIGKILL
    _wait_no_slot_held(rt)
    assert not live_kthreads(rt)
    assert rt.arena.hget("create_head") == 0


@SPARE_ONLY
def test_creator_killed_after_its_claim_before_the_wake(handoff):
    """A claim whose wake-up never came (the creator died between its CAS and
    its futex wake) is still seen by the spare (its tick), and, the creator
    being gone, kthreadd stops the new kthread: no orphan, no pinned slot."""
    rt, kind = handoff
    creator = run_started(kfuncs.time_sleep, (30,), "creator")
    wait_until(lambda: creator.pid and _ready(rt), 5.0)
    mem, T = rt.arena.mem, L.TASK
    with rt.arena.locked():          # what _create() writes, then the claim, no wake
        idx, _ = rt.arena.alloc_task()
        base = rt.arena.task_off(idx)
        write_blob(rt.arena, idx, base, b"nowake", pickle_function(kfuncs.ret_value),
                   pickle_data(3))
        L.pack_field(rt.buf, base, T, "node", -1)
        L.pack_field(rt.buf, base, T, "creator", creator.pid)
        mem.store32(base + T.state, kproc.TASK_NEW)
        mem.store32(base + T.refs, 1)
    # (kthreadd may be replacing its spares: claim whichever is ready.)
    wait_until(lambda: claim_spare(rt, idx) >= 0, 5.0, message="no spare to claim")
    wait_until(lambda: mem.load32(base + T.handoff) == L.HANDOFF_PUBLISHED, 2.0,
               message="a claimed spare never woke up")
    os.kill(creator.pid, signal.SIGKILL)
    _assert_abandoned_cleanly(rt, creator, "a claim of a dead creator left an orphan kthread")


@SPARE_ONLY
def test_spare_killed_after_its_claim_fails_the_create_at_once(handoff):
    rt, kind = handoff
    frozen = _freeze_creation(rt, kind)
    victims = frozen[1:]
    th, errors = _create_in_thread("victim")
    try:
        wait_until(lambda: _claimed(rt), 2.0)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        _thaw(frozen)
    t0 = time.monotonic()
    th.join(5)
    assert errors == [errno.ECHILD]
    assert time.monotonic() - t0 < 1.5
    _wait_no_slot_held(rt)
    t = kproc.kthread_create(kfuncs.ret_value, 0, "next")
    assert kproc.kthread_stop(t) == -errno.EINTR


@SPARE_ONLY
def test_a_claimed_spare_killed_before_it_read_its_claim_frees_its_pool_entry(handoff):
    """A spare SIGKILLed after kthreadd recorded its claim but before it read it
    (it never sets SPARE_ACK): its reap frees the pool entry too, which would
    otherwise stay claimed for ever, naming a dead pid (one a later child of
    kthreadd may get)."""
    rt, kind = handoff
    frozen = _freeze_creation(rt, kind)
    th, errors = _create_in_thread("victim")
    try:
        wait_until(lambda: _claimed(rt), 2.0)
        claimed = _claimed(rt)
        os.kill(rt.kthreadd_pid, signal.SIGCONT)
        rt.wake_kthreadd()                 # it records the claim; the spare is stopped
        time.sleep(0.3)                    # (recorded later, the reap would free it anyway)
        for pid in frozen[1:]:
            os.kill(pid, signal.SIGKILL)
    finally:
        _thaw(frozen)
    th.join(5)
    assert errors == [errno.ECHILD]
    wait_until(lambda: not set(claimed) & set(_claimed(rt)), 2.0,
               message=lambda: f"pool entries left claimed: {_claimed(rt)} "
               f"({[rt.arena.mem.load32(off) for off in POOL]})")
    _wait_no_slot_held(rt)


def test_kthreadd_killed_mid_create_ends_the_wait_within_a_second(handoff):
    rt, kind = handoff
    frozen = _freeze_creation(rt, kind)
    th, errors = _create_in_thread("orphan?")
    wait_until(lambda: _asked(rt, kind), 2.0)
    t0 = time.monotonic()
    os.kill(rt.kthreadd_pid, signal.SIGKILL)
    # Thawed before kthreadd has really exited (its PDEATHSIG not sent yet), a claimed
    # spare could still publish and the create succeed: thaw once it is dead.
    wait_until(lambda: _dead(rt.kthreadd_pid), 1.0)
    _thaw(frozen[1:])
    th.join(5)
    assert errors == [errno.ESRCH]
    assert time.monotonic() - t0 < 1.0
    wait_until(lambda: not [p for p in frozen[1:] if psutil.pid_exists(p) and
                            psutil.Process(p).status() != psutil.STATUS_ZOMBIE], 2.0,
               message="a spare outlived kthreadd")


LATE_MODULE = textwrap.dedent("""
    import kproc

    def answer(args):
        x, started = args
        kproc.complete(started)
        return x + 1
""")


def test_threadfn_of_a_module_imported_after_the_spares_were_forked(tmp_path, monkeypatch):
    """A spare forked before kthreadd imported threadfn's module (kthreadd stopped
    from before the create, so it cannot) imports the module itself."""
    monkeypatch.syspath_prepend(str(tmp_path))
    with kproc.start() as rt:
        (tmp_path / "late_mod_kproc.py").write_text(LATE_MODULE)
        import late_mod_kproc
        try:
            _stop_kthreadd_with_a_ready_spare(rt)    # it cannot import the module first
            try:
                spares = set(_spares(rt))
                t = run_started(late_mod_kproc.answer, (41,), "late")
                assert t.pid in spares
                assert kproc.kthread_stop(t) == 42
            finally:
                os.kill(rt.kthreadd_pid, signal.SIGCONT)
            t = run_started(late_mod_kproc.answer, (1,), "late2")   # and later forks
            assert kproc.kthread_stop(t) == 2
        finally:
            sys.modules.pop("late_mod_kproc", None)


@pytest.mark.parametrize("spares", ["2", "0"])
def test_full_table_is_enomem_with_or_without_spares(spares, monkeypatch):
    monkeypatch.setenv("KPROC_SPARES", spares)
    started = []
    with kproc.start(max_kthreads=2) as rt:
        if spares != "0":
            wait_until(lambda: _ready(rt), 5.0)
        for name in ("a", "b"):
            s = kproc.Completion()
            started.append((kproc.kthread_run(kfuncs.loop_until_stop, s, name), s))
        for _, s in started:
            kproc.wait_for_completion(s)
        with pytest.raises(kproc.KthreadError) as ei:
            kproc.kthread_create(kfuncs.ret_value, 0, "c")
        assert ei.value.errno == errno.ENOMEM
        assert [kproc.kthread_stop(t) for t, _ in started] == [7, 7]
        t = kproc.kthread_create(kfuncs.ret_value, 0, "after")      # harmed nothing
        assert kproc.kthread_stop(t) == -errno.EINTR
