"""kproc._native: the contract of every Mem method, on real processes where it matters.

The memory is an anonymous ``MAP_SHARED`` mmap, shared with children forked
by the test, so futexes here are the shared (not private) kind, as in the
arena.  Children always leave through ``os._exit`` and are reaped by the
parent, killed first if they outlive their timeout.  Waits on another
process go through observable state (a counter, ``sleepers``, the value a
futex_wake returns), never through sleeps.
"""

import contextlib
import errno
import mmap
import os
import re
import signal
import sys
import time
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import wait_until
from kproc._core import layout as L
from kproc._core.arena import ArenaParams
from kproc._core.layout import COMPLETION, SWAIT
from kproc._sched.task import TASK_NORMAL

try:
    from kproc import _native as native
except ImportError:
    native = None
from kproc._core.pymem import PyMem

needs_native = pytest.mark.skipif(native is None, reason="the C extension is not built")
pytestmark = pytest.mark.timeout(30)

INT_MAX = 2**31 - 1
U32_MAX = 2**32 - 1
DONE_ALL = U32_MAX
SEC = 1_000_000_000
MS = 1_000_000

# Byte offsets in the test page.
WORD = 0            # a futex word
FLAG = 4            # a hand-shake word between parent and child
COUNT32 = 8
COUNT64 = 16
COMP = 64           # a completion record
COMP2 = 96          # another one
GEN = 128           # a generation word for the gen_off checks
MUTEX = 256


@pytest.fixture
def mem():
    # MAP_SHARED | MAP_ANONYMOUS: shared with forked children.  The mapping
    # lives as long as the Mem exporting it.
    if native is None:
        pytest.skip("the C extension is not built")
    return native.Mem(mmap.mmap(-1, 4096))


class Child:
    """``fn()`` in a forked child.  Its exit status is fn's return value (an
    int, None meaning 0), or 99 if it raised (the traceback goes to stderr)."""

    def __init__(self, fn):
        self.status = None
        self.pid = os.fork()
        if self.pid == 0:
            code = 99
            try:
                code = int(fn() or 0)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reaped(self):
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = os.waitstatus_to_exitcode(status)
        return pid

    def join(self, timeout=10.0):
        """Reap the child and return its exit status; SIGKILL it after ``timeout``."""
        if self.status is None:
            try:
                wait_until(self._reaped, timeout, interval=0.001,
                           message=f"child {self.pid} still running after {timeout}s")
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                self.status = -signal.SIGKILL
                raise
        return self.status

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.status is None:
            if exc_type is None:
                self.join()
            else:                       # the test failed: do not wait for the child
                with contextlib.suppress(AssertionError):
                    self.join(0)


def wake_until_woken(mem, off, n=1, timeout=5.0):
    """futex_wake(off, n) until it reports a sleeper woken (the peer is asleep)."""
    return wait_until(lambda: mem.futex_wake(off, n), timeout,
                      message="nobody ever slept on the futex")


@contextlib.contextmanager
def sigalrm(handler, delay, interval=0.0):
    """Run ``handler`` on SIGALRM after ``delay`` s (then every ``interval`` s).

    pytest-timeout also uses SIGALRM: its handler and the time left on its
    timer are put back on the way out.
    """
    old_handler = signal.signal(signal.SIGALRM, handler)
    old_left, _ = signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, delay, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_left:
            signal.setitimer(signal.ITIMER_REAL,
                             max(old_left - (time.monotonic() - start), 0.001))


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


# -- the module and the Mem object -------------------------------------------

@needs_native
def test_module_constants_and_clock():
    assert native.HAVE_FUTEX is True
    assert native.MUTEX_SIZE % 8 == 0 and native.MUTEX_SIZE >= 24
    assert abs(native.monotonic_ns() - time.monotonic_ns()) < 50 * MS
    assert "policy" in native.__doc__


@needs_native
def test_mem_keeps_its_buffer_exported():
    buf = mmap.mmap(-1, 4096)
    m = native.Mem(buf)
    assert m.size == 4096
    with pytest.raises(BufferError):
        buf.close()
    del m
    buf.close()


@needs_native
def test_mem_needs_a_writable_buffer():
    with pytest.raises(BufferError):
        native.Mem(b"read-only")


def test_completion_record_layout_matches_python():
    """struct completion and struct swait_node of native/kproc_native.h."""
    assert (COMPLETION.size, COMPLETION.done, COMPLETION.seq, COMPLETION.sleepers,
            COMPLETION.lock, COMPLETION.head, COMPLETION.tail) == (32, 0, 4, 8, 12, 16, 20)
    assert (SWAIT.size, SWAIT.owner, SWAIT.wake, SWAIT.granted, SWAIT.next, SWAIT.prev,
            SWAIT.comp) == (32, 0, 4, 8, 12, 16, 24)


NODE1, NODE2, NODE3 = 512, 544, 576     # swait nodes


def _node(mem, node):
    mem.store32(node + SWAIT.owner, os.getpid())
    return node


def test_complete_grants_queued_nodes_first_in_first_out(mem):
    nodes = [_node(mem, n) for n in (NODE1, NODE2, NODE3)]
    for n in nodes:
        assert mem.completion_enqueue(COMP, n) == 0
    assert (mem.load32(COMP + COMPLETION.head), mem.load32(COMP + COMPLETION.tail)) == \
        (NODE1, NODE3)
    for i, n in enumerate(nodes):
        wake = mem.load32(n + SWAIT.wake)
        mem.completion_complete(COMP)
        assert mem.load32(n + SWAIT.granted) == 1 and mem.load32(n + SWAIT.wake) == wake + 1
        assert all(mem.load32(m + SWAIT.granted) == 0 for m in nodes[i + 1:])
        assert mem.load32(COMP) == 0                 # the count went to the node
    assert mem.load32(COMP + COMPLETION.head) == 0 == mem.load32(COMP + COMPLETION.tail)


def test_enqueue_takes_a_count_that_is_there_and_dequeue_unlinks(mem):
    _node(mem, NODE1)
    _node(mem, NODE2)
    mem.completion_complete(COMP)
    assert mem.completion_enqueue(COMP, NODE1) == 1 and mem.load32(COMP) == 0
    assert mem.completion_enqueue(COMP, NODE1) == 0
    assert mem.completion_enqueue(COMP, NODE2) == 0
    assert mem.completion_dequeue(COMP, NODE1) == 0      # not granted: taken off
    assert mem.load32(COMP + COMPLETION.head) == NODE2
    mem.completion_complete(COMP)
    assert mem.completion_dequeue(COMP, NODE2) == 1      # granted: the count is ours
    mem.completion_complete(COMP, True)
    assert mem.completion_enqueue(COMP, NODE1) == 1      # complete_all: never queued


# -- atomics ------------------------------------------------------------------

def test_atomics_32_return_the_old_value_and_wrap(mem):
    mem.store32(COUNT32, 5)
    assert mem.load32(COUNT32) == 5
    assert mem.fetch_add32(COUNT32, -6) == 5 and mem.load32(COUNT32) == U32_MAX
    assert mem.fetch_add32(COUNT32, 1) == U32_MAX and mem.load32(COUNT32) == 0
    assert mem.xchg32(COUNT32, 3) == 0 and mem.load32(COUNT32) == 3
    assert mem.fetch_or32(COUNT32, 0x80000004) == 3 and mem.load32(COUNT32) == 0x80000007
    assert mem.fetch_and32(COUNT32, 6) == 0x80000007 and mem.load32(COUNT32) == 6
    mem.store32(COUNT32, -1)
    assert mem.load32(COUNT32) == U32_MAX


def test_cmpxchg32_succeeds_iff_old_equals_expected(mem):
    mem.store32(COUNT32, 3)
    assert mem.cmpxchg32(COUNT32, 4, 9) == 3 and mem.load32(COUNT32) == 3
    assert mem.cmpxchg32(COUNT32, 3, 9) == 3 and mem.load32(COUNT32) == 9
    assert mem.cmpxchg32(COUNT32, 9, U32_MAX) == 9 and mem.load32(COUNT32) == U32_MAX


def test_atomics_64_are_signed_and_wrap(mem):
    mem.store64(COUNT64, -5)
    assert mem.load64(COUNT64) == -5
    assert mem.fetch_add64(COUNT64, 10) == -5 and mem.load64(COUNT64) == 5
    assert mem.fetch_add64(COUNT64, -7) == 5 and mem.load64(COUNT64) == -2
    assert mem.cmpxchg64(COUNT64, 5, 1) == -2 and mem.load64(COUNT64) == -2
    assert mem.cmpxchg64(COUNT64, -2, 1 << 40) == -2 and mem.load64(COUNT64) == 1 << 40
    assert mem.xchg64(COUNT64, 2**63 - 1) == 1 << 40
    assert mem.fetch_add64(COUNT64, 1) == 2**63 - 1 and mem.load64(COUNT64) == -2**63


u32 = st.integers(0, U32_MAX)
s64 = st.integers(-2**63, 2**63 - 1)


@needs_native
@given(start=u32, delta=st.integers(-2**31, U32_MAX), other=u32)
def test_32_bit_operations_follow_their_arithmetic_model(start, delta, other):
    m = native.Mem(mmap.mmap(-1, 4096))
    m.store32(COUNT32, start)
    assert m.fetch_add32(COUNT32, delta) == start
    assert m.load32(COUNT32) == (start + delta) % 2**32
    m.store32(COUNT32, start)
    assert m.fetch_or32(COUNT32, other) == start and m.load32(COUNT32) == start | other
    m.store32(COUNT32, start)
    assert m.fetch_and32(COUNT32, other) == start and m.load32(COUNT32) == start & other
    m.store32(COUNT32, start)
    assert m.cmpxchg32(COUNT32, other, delta) == start
    now = delta % 2**32 if other == start else start
    assert m.load32(COUNT32) == now
    assert m.xchg32(COUNT32, other) == now and m.load32(COUNT32) == other


@needs_native
@given(start=s64, delta=s64, other=s64)
def test_64_bit_operations_follow_their_arithmetic_model(start, delta, other):
    m = native.Mem(mmap.mmap(-1, 4096))
    m.store64(COUNT64, start)
    assert m.fetch_add64(COUNT64, delta) == start
    assert m.load64(COUNT64) == (start + delta + 2**63) % 2**64 - 2**63
    m.store64(COUNT64, start)
    assert m.cmpxchg64(COUNT64, other, delta) == start
    now = delta if other == start else start
    assert m.load64(COUNT64) == now
    assert m.xchg64(COUNT64, other) == now and m.load64(COUNT64) == other


def test_fetch_add_is_atomic_across_processes(mem):
    rounds = 5000

    def add():
        for _ in range(rounds):
            mem.fetch_add32(COUNT32, 1)
            mem.fetch_add64(COUNT64, -1)
    with Child(add) as a, Child(add) as b:
        add()
        assert a.join() == 0 and b.join() == 0
    assert mem.load32(COUNT32) == 3 * rounds
    assert mem.load64(COUNT64) == -3 * rounds


@pytest.mark.parametrize("call", [
    lambda m: m.load32(2),                      # misaligned
    lambda m: m.load32(4096),                   # past the end
    lambda m: m.store32(-4, 0),                 # negative
    lambda m: m.load64(4),                      # 4-aligned is not 8-aligned
    lambda m: m.cmpxchg64(4096 - 4, 0, 0),
    lambda m: m.futex_wait(2, 0, 0),
    lambda m: m.wait_change(4096, 0, 0),
    lambda m: m.futex_wake(1, 1),
    lambda m: m.completion_try(4),              # records are 8-aligned
    lambda m: m.completion_complete(4096 - 8),  # 16 bytes do not fit
    lambda m: m.completion_wait(4096 - 8, 0, 0),
    lambda m: m.mutex_init(4096 - 8),
    lambda m: m.mutex_lock(4),
    lambda m: m.futex_wake(WORD, -1),           # a negative count
])
def test_bad_offsets_raise_value_error(mem, call):
    with pytest.raises(ValueError):
        call(mem)


@pytest.mark.parametrize("call", [
    lambda m: m.load32(),
    lambda m: m.store32(0),
    lambda m: m.load32("0"),
    lambda m: m.load32(off=0),                  # the atomics are positional-only
    lambda m: m.futex_wait(0, 0, -1, 0),
    lambda m: m.futex_wait(0, 0, timeout=0),
    lambda m: m.futex_wait(0, 0, -1, timeout_ns=0),
    lambda m: m.completion_wait(COMP),
    lambda m: m.completion_complete(COMP, False, GEN),     # gen_off needs gen
])
def test_bad_arguments_raise_type_error(mem, call):
    with pytest.raises(TypeError):
        call(mem)


def test_optional_parameters_can_be_named(mem):
    assert mem.futex_wait(WORD, 0, timeout_ns=0) == 2
    assert mem.futex_wait(off=WORD, expected=1) == 1
    assert mem.wait_change(WORD, 0, spin_ns=1000, timeout_ns=0) == 2
    assert mem.completion_complete(COMP, all=True) == 0
    assert mem.completion_wait(COMP, seq_snapshot=-1, timeout_ns=None) == 1
    mem.mutex_init(MUTEX)
    assert mem.mutex_lock(MUTEX, timeout_ns=None) == 0
    mem.mutex_unlock(MUTEX)


# -- futex_wait / futex_wake ----------------------------------------------------

def test_futex_wait_times_out_at_its_deadline(mem):
    t0 = time.monotonic_ns()
    assert mem.futex_wait(WORD, 0, 20 * MS) == 2
    late = time.monotonic_ns() - t0 - 20 * MS
    assert 0 <= late < 500 * MS


def test_futex_wait_zero_timeout_does_not_sleep(mem):
    assert mem.futex_wait(WORD, 0, 0) == 2
    assert mem.futex_wait(WORD, 1, 0) == 1


def test_futex_wait_returns_1_when_the_word_differs(mem):
    mem.store32(WORD, 5)
    assert mem.futex_wait(WORD, 0) == 1


def test_futex_wake_without_sleepers_returns_0(mem):
    assert mem.futex_wake(WORD, INT_MAX) == 0


def test_futex_wake_wakes_a_sleeper_in_another_process(mem):
    with Child(lambda: mem.futex_wait(WORD, 0, 10 * SEC)) as child:
        assert wake_until_woken(mem, WORD) == 1
        assert child.join() == 0                    # futex_wait returned 0: woken


def test_futex_wait_is_woken_from_another_process(mem):
    with Child(lambda: 0 if wake_until_woken(mem, WORD) == 1 else 1) as child:
        assert mem.futex_wait(WORD, 0, 10 * SEC) == 0
        assert child.join() == 0


def test_futex_wake_int_max_wakes_every_sleeper(mem):
    def sleeper():
        return mem.futex_wait(WORD, 0, 10 * SEC)
    with Child(sleeper) as a, Child(sleeper) as b:
        woken = [0]

        def both_woken():
            woken[0] += mem.futex_wake(WORD, INT_MAX)
            return woken[0] == 2
        wait_until(both_woken, 5.0)
        assert a.join() == 0 and b.join() == 0


# -- wait_change ----------------------------------------------------------------

def test_wait_change_returns_at_once_when_the_word_differs(mem):
    mem.store32(WORD, 7)
    assert mem.wait_change(WORD, 0) == 0
    assert mem.wait_change(WORD, 0, 0, 1 * MS) == 0


def test_wait_change_spins_then_sleeps_then_times_out(mem):
    t0 = time.monotonic_ns()
    assert mem.wait_change(WORD, 0, 30 * MS, 1 * MS) == 2
    assert time.monotonic_ns() - t0 >= 30 * MS


def test_zero_timeout_with_a_spin_spins_but_never_sleeps(mem):
    # The timeout bounds the sleep, not the spin: the callers' fast path.
    t0 = time.monotonic_ns()
    assert mem.wait_change(WORD, 0, 0, 20 * MS) == 2
    assert mem.completion_wait(COMP, _seq(mem), 0, 20 * MS) == 0
    assert 40 * MS <= time.monotonic_ns() - t0 < 2 * SEC
    assert _sleepers(mem) == 0


def test_wait_change_sees_a_store_from_another_process_while_spinning(mem):
    # No futex_wake: only the spin (or the word check before sleeping) sees it.
    def store():
        wait_until(lambda: mem.load32(FLAG), 5.0)
        mem.store32(WORD, 1)
    with Child(store) as child:
        mem.store32(FLAG, 1)
        assert mem.wait_change(WORD, 0, 10 * SEC, 10 * SEC) == 0
        assert mem.load32(WORD) == 1
        assert child.join() == 0


def test_wait_change_returns_0_when_woken_without_a_change(mem):
    with Child(lambda: 0 if wake_until_woken(mem, WORD) == 1 else 1) as child:
        assert mem.wait_change(WORD, 0, 10 * SEC) == 0
        assert mem.load32(WORD) == 0
        assert child.join() == 0


# -- completions ----------------------------------------------------------------

def _sleepers(mem, off=COMP):
    return mem.load32(off + COMPLETION.sleepers)


def _seq(mem, off=COMP):
    return mem.load32(off + COMPLETION.seq)


def _acquire(mem, off, timeout_ns=10 * SEC, spin_ns=0):
    """The caller's loop: 1 acquired, 0 timed out; 2 means try again."""
    while True:
        rc = mem.completion_wait(off, _seq(mem, off), timeout_ns, spin_ns)
        if rc != 2:
            return rc


def test_a_fresh_completion_is_not_done(mem):
    assert not mem.completion_done(COMP)
    assert not mem.completion_try(COMP)
    assert mem.completion_wait(COMP, _seq(mem), 0) == 0


def test_complete_counts_one_waiter_each(mem):
    assert mem.completion_complete(COMP) == 0
    mem.completion_complete(COMP)
    assert mem.completion_done(COMP) and mem.load32(COMP) == 2
    assert mem.completion_wait(COMP, _seq(mem), 1 * MS) == 1
    assert mem.completion_try(COMP)
    assert not mem.completion_done(COMP)
    t0 = time.monotonic_ns()
    assert mem.completion_wait(COMP, _seq(mem), 10 * MS) == 0
    assert time.monotonic_ns() - t0 >= 10 * MS
    assert _sleepers(mem) == 0


def test_complete_bumps_seq(mem):
    mem.completion_complete(COMP)
    mem.completion_complete(COMP, True)
    assert _seq(mem) == 2


def test_complete_saturates_below_complete_all(mem):
    mem.store32(COMP, DONE_ALL - 1)
    mem.completion_complete(COMP)
    assert mem.load32(COMP) == DONE_ALL - 1
    assert mem.completion_try(COMP) and mem.load32(COMP) == DONE_ALL - 2


def test_complete_all_lets_every_future_waiter_through(mem):
    mem.completion_complete(COMP, all=True)
    assert all(mem.completion_try(COMP) for _ in range(5))
    assert mem.completion_wait(COMP, _seq(mem), 0) == 1
    mem.completion_complete(COMP)               # complete after complete_all: still all
    assert mem.load32(COMP) == DONE_ALL and mem.completion_done(COMP)


def test_complete_all_wakes_every_present_waiter(mem):
    def waiter():
        return _acquire(mem, COMP) != 1
    with Child(waiter) as a, Child(waiter) as b:
        wait_until(lambda: _sleepers(mem) == 2, 5.0)
        mem.completion_complete(COMP, True)
        assert a.join() == 0 and b.join() == 0
    assert _sleepers(mem) == 0 and mem.load32(COMP) == DONE_ALL


def test_complete_lets_sleepers_through_one_per_count(mem):
    def waiter():
        return _acquire(mem, COMP) != 1
    with Child(waiter) as a, Child(waiter) as b:
        wait_until(lambda: _sleepers(mem) == 2, 5.0)
        mem.completion_complete(COMP)
        wait_until(lambda: mem.load32(COMP) == 0, 5.0)     # one took it
        mem.completion_complete(COMP)
        assert a.join() == 0 and b.join() == 0
    assert mem.load32(COMP) == 0 and _sleepers(mem) == 0


def test_completion_wait_reports_a_seq_bump_without_acquiring(mem):
    snap = _seq(mem)
    mem.fetch_add32(COMP + COMPLETION.seq, 1)
    assert mem.completion_wait(COMP, snap, 1 * SEC) == 2
    assert mem.completion_wait(COMP, snap, 1 * SEC, 1 * MS) == 2


def test_completion_wait_returns_2_when_another_process_bumps_seq(mem):
    def bump():
        # The waiter may not be in FUTEX_WAIT yet: then the moved seq makes
        # it return at once instead (EAGAIN), with the same result.
        wait_until(lambda: _sleepers(mem) == 1, 5.0)
        mem.fetch_add32(COMP + COMPLETION.seq, 1)
        mem.futex_wake(COMP + COMPLETION.seq, INT_MAX)
    with Child(bump) as child:
        assert mem.completion_wait(COMP, _seq(mem), 10 * SEC) == 2
        assert child.join() == 0
    assert _sleepers(mem) == 0 and not mem.completion_done(COMP)


def test_completion_wait_negative_snapshot_reads_seq_now(mem):
    mem.fetch_add32(COMP + COMPLETION.seq, 5)
    assert mem.completion_wait(COMP, -1, 1 * MS) == 0


def test_completion_generation_check_refuses_a_stale_record(mem):
    mem.store32(GEN, 7)
    assert mem.completion_complete(COMP, False, GEN, 6) == -1
    assert not mem.completion_done(COMP) and _seq(mem) == 0
    assert mem.completion_complete(COMP, False, GEN, 7) == 0
    assert mem.completion_wait(COMP, -1, 0, 0, GEN, 6) == -1
    assert mem.completion_done(COMP)
    assert mem.completion_wait(COMP, -1, 0, 0, GEN, 7) == 1


@pytest.mark.parametrize("spin_ns", [0, 50_000], ids=["sleep", "spin"])
def test_completion_ping_pong_across_processes(mem, spin_ns):
    rounds = 1000

    def pong():
        for _ in range(rounds):
            if _acquire(mem, COMP, 5 * SEC, spin_ns) != 1:
                return 1
            mem.completion_complete(COMP2)
        return 0
    with Child(pong) as child:
        for _ in range(rounds):
            mem.completion_complete(COMP)
            assert _acquire(mem, COMP2, 5 * SEC, spin_ns) == 1
        assert child.join() == 0
    for off in (COMP, COMP2):
        assert mem.load32(off) == 0 and _sleepers(mem, off) == 0
        assert _seq(mem, off) == rounds


# -- signals ----------------------------------------------------------------------

@contextlib.contextmanager
def mutex_held_by_child(mem):
    """A child holds MUTEX until the ``release()`` this yields is called (or
    the block ends)."""
    mem.mutex_init(MUTEX)

    def hold():
        mem.mutex_lock(MUTEX)
        mem.store32(FLAG, 1)
        while mem.load32(FLAG) != 2:
            mem.futex_wait(FLAG, 1, 5 * SEC)
        mem.mutex_unlock(MUTEX)

    def release():
        mem.store32(FLAG, 2)
        mem.futex_wake(FLAG, 1)
    with Child(hold) as child:
        wait_until(lambda: mem.load32(FLAG) == 1, 5.0)
        try:
            yield release
        finally:
            release()
        assert child.join() == 0


@pytest.mark.parametrize("call", [
    lambda m: m.futex_wait(WORD, 0),
    lambda m: m.wait_change(WORD, 0, -1, 1 * MS),
    lambda m: m.completion_wait(COMP, _seq(m)),
    lambda m: m.completion_wait(COMP, _seq(m), 10 * SEC, 1 * MS),
], ids=["futex_wait", "wait_change", "completion_wait", "completion_wait_spin"])
def test_a_raising_signal_handler_interrupts_a_blocked_wait(mem, call):
    with sigalrm(raise_keyboard_interrupt, 0.05), pytest.raises(KeyboardInterrupt):
        call(mem)
    assert _sleepers(mem) == 0


def test_a_raising_signal_handler_interrupts_a_blocked_mutex_lock(mem):
    with mutex_held_by_child(mem):
        t0 = time.monotonic()
        with sigalrm(raise_keyboard_interrupt, 0.05), pytest.raises(KeyboardInterrupt):
            mem.mutex_lock(MUTEX)
        assert time.monotonic() - t0 < 5.0
    assert mem.mutex_lock(MUTEX, 0) == 0
    mem.mutex_unlock(MUTEX)


def test_signals_that_do_not_raise_keep_the_same_deadline(mem):
    caught = []
    with sigalrm(lambda signum, frame: caught.append(signum), 0.01, 0.01):
        t0 = time.monotonic_ns()
        assert mem.futex_wait(WORD, 0, 100 * MS) == 2
        assert mem.completion_wait(COMP, _seq(mem), 100 * MS) == 0
        elapsed = time.monotonic_ns() - t0
    assert caught
    assert 200 * MS <= elapsed < 2 * SEC
    assert _sleepers(mem) == 0


# -- robust mutex -------------------------------------------------------------------

def test_mutex_lock_and_unlock(mem):
    mem.mutex_init(MUTEX)
    assert mem.mutex_lock(MUTEX) == 0
    mem.mutex_unlock(MUTEX)
    assert mem.mutex_lock(MUTEX, 0) == 0
    mem.mutex_unlock(MUTEX)


def test_mutex_relock_by_its_owner_raises_edeadlk(mem):
    mem.mutex_init(MUTEX)
    mem.mutex_lock(MUTEX)
    with pytest.raises(OSError) as info:
        mem.mutex_lock(MUTEX)
    assert info.value.errno == errno.EDEADLK
    mem.mutex_unlock(MUTEX)


def test_robust_mutex_survives_a_dead_holder(mem):
    mem.mutex_init(MUTEX)
    with Child(lambda: mem.mutex_lock(MUTEX)) as child:    # exits holding it
        assert child.join() == 0
    assert mem.mutex_lock(MUTEX, 1 * SEC) == 1             # owner died, made consistent
    mem.mutex_unlock(MUTEX)
    assert mem.mutex_lock(MUTEX) == 0
    mem.mutex_unlock(MUTEX)
    assert mem.mutex_lock(MUTEX, 0) == 0
    mem.mutex_unlock(MUTEX)


def test_mutex_lock_times_out_and_a_non_owner_cannot_unlock(mem):
    with mutex_held_by_child(mem):
        t0 = time.monotonic_ns()
        assert mem.mutex_lock(MUTEX, 20 * MS) == 2
        assert 20 * MS <= time.monotonic_ns() - t0 < 2 * SEC
        assert mem.mutex_lock(MUTEX, 0) == 2
        with pytest.raises(OSError) as info:
            mem.mutex_unlock(MUTEX)
        assert info.value.errno == errno.EPERM


def test_mutex_lock_waits_for_the_holder_to_unlock(mem):
    with mutex_held_by_child(mem) as release:
        release()
        assert mem.mutex_lock(MUTEX, 5 * SEC) == 0
        mem.mutex_unlock(MUTEX)


# -- the layout, by field name ---------------------------------------------------

def arena_layout(max_works=8):
    """An arena-sized shared mapping and native_layout() of it (real records, real tables)."""
    params = ArenaParams(2, 2, max_works)
    return params, mmap.mmap(-1, params.size), L.native_layout(params, TASK_NORMAL)


def test_native_layout_is_derived_from_the_records():
    params, _, layout = arena_layout()
    for name in ("TASK", "TASK_BLOB", "WORKER", "WORK", "COMPLETION"):
        rec = getattr(L, name)
        assert {f"{name}.{f}": getattr(rec, f) for f in rec.formats}.items() <= layout.items()
        assert (layout[f"{name}.size"], layout[f"{name}.stride"]) == (rec.size, rec.stride)
    assert (layout["WORK.base"], layout["WORK.stride"], layout["WORK.count"]) == \
        (params.works, L.WORK.stride, params.max_works)
    assert (layout["TASK.base"], layout["TASK.stride"], layout["TASK.count"]) == \
        (params.tasks, L.TASK.stride, params.max_kthreads)
    assert (layout["ON_NONE"], layout["ON_WORKLIST"], layout["ON_TIMER"], layout["WK_FLUSH"],
            layout["TASK_NORMAL"]) == (L.ON_NONE, L.ON_WORKLIST, L.ON_TIMER, L.WK_FLUSH, 3)


@needs_native
def test_work_fast_paths_need_wq_setup_first():
    _, buf, layout = arena_layout()
    mem = native.Mem(buf)
    with pytest.raises(RuntimeError, match="wq_setup"):
        mem.work_queue(0, 0, 1, 1, 1, 0, False)
    with pytest.raises(RuntimeError, match="wq_setup"):
        mem.work_pop(0, 0, 0)
    with pytest.raises(TypeError, match="native_layout"):
        mem.wq_setup(list(layout.values()))     # the positional list of old
    mem.wq_setup(layout)


@needs_native
@pytest.mark.parametrize("name", ["WORKER.head", "WORK.expires", "TASK.count", "TASK_NORMAL"])
def test_wq_setup_names_a_missing_field(name):
    _, buf, layout = arena_layout()
    mem = native.Mem(buf)
    del layout[name]
    with pytest.raises(KeyError, match=re.escape(name)):
        mem.wq_setup(layout)
    with pytest.raises(RuntimeError, match="wq_setup"):
        mem.work_pop(0, 0, 0)


@needs_native
@pytest.mark.parametrize("name, value, match", [
    ("WORKER.head", -4, "'WORKER.head' is negative"),
    ("WORKER.tail", L.WORKER.size, "'WORKER.tail'.*inside 'WORKER.size'"),
    ("WORK.expires", 12, "'WORK.expires'.*8-aligned"),
    ("WORKER.lock", L.WORKER.size - 8, "'WORKER.lock'"),
    ("WORK.count", 10**9, "beyond"),
    ("TASK.stride", 0, r"inside 'TASK.stride' \(0\)"),
    ("ON_NONE", 1, "ON_NONE must be 0"),
    ("ON_TIMER", L.ON_WORKLIST, "ON_NONE must be 0"),
])
def test_wq_setup_refuses_a_layout_that_does_not_fit(name, value, match):
    _, buf, layout = arena_layout()
    mem = native.Mem(buf)
    layout[name] = value
    with pytest.raises(ValueError, match=match):
        mem.wq_setup(layout)
    with pytest.raises(RuntimeError, match="wq_setup"):
        mem.work_queue(0, 0, 1, 1, 1, 0, False)


# -- the work-list primitives, in C and in pure Python -----------------------------------

K, W = L.WORKER, L.WORK
ON_WORKLIST, ON_TIMER = L.ON_WORKLIST, L.ON_TIMER


class Lists:
    """A worker and its works laid out with the real records in an arena-sized memfd,
    behind one Mem implementation (``"native"`` or ``"pymem"``), the worker lock
    held by this thread."""

    def __init__(self, impl, setup=True):
        self.params = ArenaParams(2, 2, 8)
        self.fd = os.memfd_create("kproc-test-worklist")
        os.ftruncate(self.fd, self.params.size)
        self.buf = mmap.mmap(self.fd, self.params.size)
        self.mem = native.Mem(self.buf) if impl == "native" else PyMem(self.buf, self.fd)
        self.kbase = self.params.workers
        self.lock = self.kbase + K.lock
        self.mem.mutex_init(self.lock)
        if setup:
            self.mem.wl_setup(L.native_layout(self.params, TASK_NORMAL))
        assert self.mem.mutex_lock(self.lock) == 0

    def close(self):
        self.mem.mutex_unlock(self.lock)
        del self.mem
        self.buf.close()
        os.close(self.fd)

    @contextlib.contextmanager
    def unlocked(self):
        self.mem.mutex_unlock(self.lock)
        try:
            yield
        finally:
            assert self.mem.mutex_lock(self.lock) == 0

    def off(self, idx):
        return self.params.works + (idx - 1) * L.WORK.stride

    def work(self, idx, field, value=None):
        """WORK.field of work ``idx`` (index + 1); stored first if ``value`` is given."""
        wide = W.formats[field] in ("q", "Q")
        off = self.off(idx) + getattr(W, field)
        if value is not None:
            (self.mem.store64 if wide else self.mem.store32)(off, value)
        return (self.mem.load64 if wide else self.mem.load32)(off)

    def worker(self, field, value=None):
        if value is not None:
            self.mem.store32(self.kbase + getattr(K, field), value)
        return self.mem.load32(self.kbase + getattr(K, field))

    def walk(self, where):
        """The list ``where`` head to tail, its back links, tail and marks checked."""
        head, tail = ("head", "tail") if where == ON_WORKLIST else ("thead", "ttail")
        order, prev, idx = [], 0, self.worker(head)
        while idx:
            assert self.work(idx, "prev") == prev and self.work(idx, "where") == where
            order.append(idx)
            prev, idx = idx, self.work(idx, "next")
            assert len(order) <= self.params.max_works, "the list loops"
        assert self.worker(tail) == prev
        return order

    def snapshot(self):
        """Every byte the primitives may touch: the worker up to its lock, every work slot."""
        works = self.params.works
        return (bytes(self.buf[self.kbase:self.kbase + K.lock]),
                bytes(self.buf[works:works + self.params.max_works * L.WORK.stride]))

    def link(self, where, *idxs, before=0):
        for idx in idxs:
            self.mem.wl_link_before(self.kbase, where, idx, before)

    def arm(self, idx, expires):
        """Put ``idx`` on the timer list sorted by expiry, as kthread_queue_delayed_work does."""
        self.work(idx, "expires", expires)
        before = 0
        for other in reversed(self.walk(ON_TIMER)):
            if self.work(other, "expires") <= expires:
                break
            before = other
        self.link(ON_TIMER, idx, before=before)


IMPLS = [pytest.param("native", marks=needs_native), "pymem"]


@pytest.fixture(params=IMPLS)
def lists(request):
    made = Lists(request.param)
    yield made
    made.close()


def test_wl_link_before_links_marks_and_counts(lists):
    lists.link(ON_WORKLIST, 1, 2, 3)
    assert lists.walk(ON_WORKLIST) == [1, 2, 3]
    lists.link(ON_WORKLIST, 4, before=2)
    lists.link(ON_WORKLIST, 5, before=1)
    assert lists.walk(ON_WORKLIST) == [5, 1, 4, 2, 3]
    assert (lists.worker("depth"), lists.worker("ndelayed")) == (5, 0)


def test_wl_unlink_takes_a_work_off_anywhere_in_its_list(lists):
    lists.link(ON_WORKLIST, 1, 2, 3, 4)
    for idx, left in ((2, [1, 3, 4]), (1, [3, 4]), (4, [3]), (3, [])):
        lists.mem.wl_unlink(lists.kbase, ON_WORKLIST, idx)
        assert lists.walk(ON_WORKLIST) == left
        assert [lists.work(idx, f) for f in ("where", "prev", "next")] == [L.ON_NONE, 0, 0]
        assert lists.worker("depth") == len(left)
    assert (lists.worker("head"), lists.worker("tail")) == (0, 0)


def test_wl_pop_takes_the_head_in_queueing_order_and_leaves_current_work(lists):
    lists.link(ON_WORKLIST, 3, 1, 2)
    lists.worker("current", 7)
    assert [lists.mem.wl_pop(lists.kbase) for _ in range(4)] == [3, 1, 2, 0]
    assert lists.worker("current") == 7 and lists.worker("depth") == 0
    assert [lists.work(i, "where") for i in (1, 2, 3)] == [L.ON_NONE] * 3


def test_flush_markers_are_on_the_work_list_but_not_in_its_depth(lists):
    lists.work(2, "kind", L.WK_FLUSH)
    lists.link(ON_WORKLIST, 1, 2, 3)
    assert lists.worker("depth") == 2
    assert lists.mem.wl_pop(lists.kbase) == 1 and lists.worker("depth") == 1
    assert lists.mem.wl_pop(lists.kbase) == 2 and lists.worker("depth") == 1
    lists.link(ON_WORKLIST, 2, before=3)
    lists.mem.wl_unlink(lists.kbase, ON_WORKLIST, 2)
    assert lists.worker("depth") == 1 and lists.walk(ON_WORKLIST) == [3]


def test_the_timer_list_is_counted_in_ndelayed(lists):
    lists.link(ON_TIMER, 1, 2)
    assert lists.walk(ON_TIMER) == [1, 2] and lists.walk(ON_WORKLIST) == []
    assert (lists.worker("depth"), lists.worker("ndelayed")) == (0, 2)
    lists.mem.wl_unlink(lists.kbase, ON_TIMER, 1)
    assert lists.walk(ON_TIMER) == [2] and lists.worker("ndelayed") == 1


def test_wl_fire_timers_moves_expired_works_in_expiry_order(lists):
    lists.link(ON_WORKLIST, 5)
    for idx, expires in ((1, 300), (2, 100), (3, 200), (4, 900)):
        lists.arm(idx, expires)
    assert lists.walk(ON_TIMER) == [2, 3, 1, 4]
    assert lists.mem.wl_fire_timers(lists.kbase, 99) == (0, 0)
    assert lists.mem.wl_fire_timers(lists.kbase, 300) == (3, 0)
    assert lists.walk(ON_WORKLIST) == [5, 2, 3, 1] and lists.walk(ON_TIMER) == [4]
    assert (lists.worker("depth"), lists.worker("ndelayed")) == (4, 1)
    assert lists.mem.wl_fire_timers(lists.kbase, 2**62) == (1, 0)
    assert lists.walk(ON_WORKLIST) == [5, 2, 3, 1, 4] and lists.walk(ON_TIMER) == []
    assert lists.mem.wl_fire_timers(lists.kbase, 2**62) == (0, 0)


def test_wl_fire_timers_only_takes_a_work_being_cancelled_off(lists):
    lists.arm(1, 100)
    lists.arm(2, 200)
    lists.work(1, "canceling", 1)
    assert lists.mem.wl_fire_timers(lists.kbase, 1000) == (1, 0)
    assert lists.walk(ON_WORKLIST) == [2] and lists.walk(ON_TIMER) == []
    assert lists.work(1, "where") == L.ON_NONE and lists.worker("ndelayed") == 0


def test_wl_fire_timers_queues_flush_markers_right_behind_their_work(lists):
    lists.link(ON_WORKLIST, 5)
    lists.arm(1, 100)
    lists.arm(2, 200)
    for marker in (6, 7):                       # kthread_flush_work() twice: 7 is the newer
        lists.work(marker, "kind", L.WK_FLUSH)
        lists.work(marker, "next", lists.work(1, "flushers"))
        lists.work(1, "flushers", marker)
    assert lists.mem.wl_fire_timers(lists.kbase, 1000) == (2, 0)
    assert lists.walk(ON_WORKLIST) == [5, 1, 6, 7, 2]
    assert lists.work(1, "flushers") == 0 and lists.worker("depth") == 3


def test_wl_fire_timers_stops_at_a_cancelled_work_that_flushers_wait_on(lists):
    for idx in (1, 2, 3):
        lists.arm(idx, idx * 100)
    lists.work(2, "canceling", 1)
    lists.work(2, "flushers", 6)
    lists.work(6, "kind", L.WK_FLUSH)
    assert lists.mem.wl_fire_timers(lists.kbase, 1000) == (1, 2)
    assert lists.walk(ON_WORKLIST) == [1] and lists.walk(ON_TIMER) == [2, 3]
    assert lists.work(2, "flushers") == 6
    lists.mem.wl_unlink(lists.kbase, ON_TIMER, 2)   # the caller completes marker 6 here
    assert lists.mem.wl_fire_timers(lists.kbase, 1000) == (1, 0)
    assert lists.walk(ON_WORKLIST) == [1, 3] and lists.worker("ndelayed") == 0


WL_CALLS = {
    "link_before": lambda m, k: m.wl_link_before(k, ON_WORKLIST, 2, 0),
    "unlink": lambda m, k: m.wl_unlink(k, ON_WORKLIST, 1),
    "pop": lambda m, k: m.wl_pop(k),
    "fire_timers": lambda m, k: m.wl_fire_timers(k, 0),
}


@pytest.mark.parametrize("call", WL_CALLS.values(), ids=WL_CALLS.keys())
def test_wl_methods_refuse_to_run_without_the_worker_lock(lists, call):
    lists.link(ON_WORKLIST, 1)
    before = lists.snapshot()
    with lists.unlocked():
        with pytest.raises(RuntimeError, match="worker lock is not held"):
            call(lists.mem, lists.kbase)
        assert lists.mem.mutex_lock(lists.lock, 0) == 0     # the check left it free
        lists.mem.mutex_unlock(lists.lock)
    assert lists.snapshot() == before


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("call", WL_CALLS.values(), ids=WL_CALLS.keys())
def test_wl_methods_need_wl_setup_first(impl, call):
    made = Lists(impl, setup=False)
    try:
        with pytest.raises(RuntimeError, match=r"before wl_setup\(\)"):
            call(made.mem, made.kbase)
    finally:
        made.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_wl_setup_names_a_missing_field_and_refuses_a_list(impl):
    made = Lists(impl, setup=False)
    try:
        layout = L.native_layout(made.params, TASK_NORMAL)
        with pytest.raises(TypeError, match="native_layout"):
            made.mem.wl_setup(list(layout.values()))
        del layout["WORKER.ttail"]
        with pytest.raises(KeyError, match="WORKER.ttail"):
            made.mem.wl_setup(layout)
        layout["WORKER.ttail"] = L.WORKER.size
        with pytest.raises(ValueError, match="'WORKER.ttail'"):
            made.mem.wl_setup(layout)
        with pytest.raises(RuntimeError, match=r"before wl_setup\(\)"):
            made.mem.wl_pop(made.kbase)
    finally:
        made.close()


@pytest.mark.parametrize("call, exc, match", [
    (lambda m, k: m.wl_link_before(k, 7, 2, 0), ValueError, "neither ON_WORKLIST"),
    (lambda m, k: m.wl_link_before(k, ON_WORKLIST, 0, 0), ValueError, "0 is not a work slot"),
    (lambda m, k: m.wl_link_before(k, ON_WORKLIST, 999, 0), ValueError, "999 is not a work slot"),
    (lambda m, k: m.wl_link_before(k, ON_WORKLIST, 2, 999), ValueError, "999 is not a work slot"),
    (lambda m, k: m.wl_link_before(k, ON_WORKLIST, 1, 0), ValueError, "1 is already on a list"),
    (lambda m, k: m.wl_link_before(k, ON_WORKLIST, 2, 4), ValueError, "4 is not on list 1"),
    (lambda m, k: m.wl_link_before(k, ON_TIMER, 2, 1), ValueError, "1 is not on list 2"),
    (lambda m, k: m.wl_link_before(k, ON_TIMER, 3, 0), ValueError, "flush marker 3"),
    (lambda m, k: m.wl_unlink(k, ON_TIMER, 1), ValueError, "1 is not on list 2"),
    (lambda m, k: m.wl_unlink(k, ON_WORKLIST, 2), ValueError, "2 is not on list 1"),
    (lambda m, k: m.wl_pop(k + 4), ValueError, "aligned"),
    (lambda m, k: m.wl_pop(-8), ValueError, "bounds"),
    (lambda m, k: m.wl_pop(), TypeError, None),
    (lambda m, k: m.wl_fire_timers(k, "now"), TypeError, None),
])
def test_wl_methods_refuse_bad_arguments_and_change_nothing(lists, call, exc, match):
    lists.link(ON_WORKLIST, 1)
    lists.work(3, "kind", L.WK_FLUSH)
    before = lists.snapshot()
    with pytest.raises(exc, match=match):
        call(lists.mem, lists.kbase)
    assert lists.snapshot() == before


@pytest.mark.parametrize("corrupt, call", [
    (("worker", "tail", 99), WL_CALLS["link_before"]),
    (("work", 1, "next", 99), WL_CALLS["unlink"]),
    (("work", 1, "next", 99), WL_CALLS["pop"]),
    (("worker", "thead", 99), WL_CALLS["fire_timers"]),
], ids=["link_before", "unlink", "pop", "fire_timers"])
def test_a_link_outside_the_work_table_is_a_corrupt_list(lists, corrupt, call):
    lists.link(ON_WORKLIST, 1)
    if corrupt[0] == "worker":
        lists.worker(*corrupt[1:])
    else:
        lists.work(*corrupt[1:])
    before = lists.snapshot()
    with pytest.raises(RuntimeError, match="corrupt"):
        call(lists.mem, lists.kbase)
    assert lists.snapshot() == before


@needs_native
def test_wl_setup_after_wq_setup_keeps_the_fast_paths():
    made = Lists("native", setup=False)
    try:
        layout = L.native_layout(made.params, TASK_NORMAL)
        made.mem.wq_setup(layout)
        made.mem.wl_setup(layout)
        made.mem.mutex_unlock(made.lock)
        try:
            assert made.mem.work_pop(made.kbase, 0, 0) == 0     # both lists empty
        finally:
            assert made.mem.mutex_lock(made.lock) == 0
    finally:
        made.close()


# Links outnumber pops, so that the lists fill; some calls are refused.
_wl_link = st.tuples(st.just("link"), st.sampled_from([ON_WORKLIST, ON_TIMER] * 4 + [5]),
                     st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9]),
                     st.sampled_from([0] * 8 + [1, 3, 6, 9]))
_wl_unlink = st.tuples(st.just("unlink"), st.sampled_from([ON_WORKLIST, ON_TIMER]),
                       st.integers(1, 8))
_wl_by_kind = {"link": _wl_link, "unlink": _wl_unlink, "pop": st.tuples(st.just("pop")),
               "fire": st.tuples(st.just("fire"), st.integers(0, 1000))}
wl_ops = st.sampled_from(["link"] * 4 + ["unlink"] * 3 + ["pop", "fire"]).flatmap(
    _wl_by_kind.__getitem__)


def _apply(made, op):
    name, *args = op
    call = {"link": made.mem.wl_link_before, "unlink": made.mem.wl_unlink,
            "pop": made.mem.wl_pop, "fire": made.mem.wl_fire_timers}[name]
    try:
        return call(made.kbase, *args)
    except (ValueError, RuntimeError) as exc:
        return type(exc)


@needs_native
@given(st.lists(wl_ops, min_size=10, max_size=80))
def test_the_c_and_python_primitives_make_the_same_lists(ops):
    made = [Lists("native"), Lists("pymem")]
    try:
        for m in made:
            for idx in range(1, 9):
                m.work(idx, "expires", idx * 100)
            m.work(7, "canceling", 1)
            m.work(8, "kind", L.WK_FLUSH)       # a marker only work 6 can bring in
            m.work(6, "flushers", 8)
        for op in ops:
            assert _apply(made[0], op) == _apply(made[1], op), op
        assert made[0].snapshot() == made[1].snapshot()
    finally:
        for m in made:
            m.close()
