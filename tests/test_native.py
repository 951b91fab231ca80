"""kproc._native: atomics, futexes, completions, robust mutex (STYLE: C wraps syscalls)."""

import mmap
import os
import signal
import time

import pytest

native = pytest.importorskip("kproc._native")
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def mem():
    buf = mmap.mmap(-1, 4096)          # MAP_SHARED | MAP_ANONYMOUS: shared across fork
    yield native.Mem(buf)      # the mapping goes when the last Mem export does


def _child(fn):
    """Run fn() in a forked child; return its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


def _reap(pid, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child did not finish")


def test_atomics_32(mem):
    mem.store32(8, 5)
    assert mem.load32(8) == 5
    assert mem.fetch_add32(8, -6) == 5 and mem.load32(8) == 0xFFFFFFFF   # wraps
    assert mem.xchg32(8, 3) == 0xFFFFFFFF
    assert mem.cmpxchg32(8, 4, 9) == 3 and mem.load32(8) == 3            # failed CAS
    assert mem.cmpxchg32(8, 3, 9) == 3 and mem.load32(8) == 9
    assert mem.fetch_or32(8, 6) == 9 and mem.load32(8) == 15
    assert mem.fetch_and32(8, 4) == 15 and mem.load32(8) == 4


def test_atomics_64(mem):
    mem.store64(16, -5)
    assert mem.load64(16) == -5
    assert mem.fetch_add64(16, 10) == -5 and mem.load64(16) == 5
    assert mem.cmpxchg64(16, 5, 1 << 40) == 5 and mem.load64(16) == 1 << 40
    assert mem.xchg64(16, 0) == 1 << 40


@pytest.mark.parametrize("call", [lambda m: m.load32(2), lambda m: m.load32(4096),
                                  lambda m: m.load64(4), lambda m: m.store32(-4, 0),
                                  lambda m: m.completion_try(4)])
def test_bounds_and_alignment(mem, call):
    with pytest.raises(ValueError):
        call(mem)


def test_futex_wait_timeout_and_eagain(mem):
    t0 = time.monotonic()
    assert mem.futex_wait(0, 0, 20_000_000) == 2
    assert 0.019 < time.monotonic() - t0 < 0.5
    assert mem.futex_wait(0, 1, -1) == 1


def test_futex_wake_from_another_process(mem):
    pid = _child(lambda: (time.sleep(0.05), mem.store32(0, 1), mem.futex_wake(0, 1)))
    assert mem.wait_change(0, 0, 5_000_000_000) == 0
    assert mem.load32(0) == 1
    _reap(pid)


def test_wait_change_spins_then_sleeps(mem):
    t0 = time.monotonic()
    assert mem.wait_change(0, 0, 30_000_000, 1_000_000) == 2
    assert time.monotonic() - t0 >= 0.029
    mem.store32(0, 7)
    assert mem.wait_change(0, 0, -1, 1_000_000) == 0


def test_completion_counting(mem):
    assert not mem.completion_done(64)
    mem.completion_complete(64)
    mem.completion_complete(64)
    assert mem.completion_wait(64, mem.load32(68), 1_000_000) == 1
    assert mem.completion_try(64)
    assert mem.completion_wait(64, mem.load32(68), 1_000_000) == 0
    mem.completion_complete(64, True)
    assert all(mem.completion_try(64) for _ in range(5))


def test_completion_wait_reports_seq_bump_without_acquiring(mem):
    snap = mem.load32(68)
    mem.fetch_add32(68, 1)
    assert mem.completion_wait(64, snap, 1_000_000_000) == 2


def test_completion_ping_pong_across_processes(mem):
    rounds = 1000

    def child():
        for _ in range(rounds):
            while mem.completion_wait(64, mem.load32(68), 2_000_000_000, 20_000) != 1:
                pass
            mem.completion_complete(80)
    pid = _child(child)
    for _ in range(rounds):
        mem.completion_complete(64)
        while mem.completion_wait(80, mem.load32(84), 2_000_000_000, 20_000) != 1:
            pass
    assert _reap(pid) == 0
    assert mem.load32(72) == 0 and mem.load32(88) == 0     # no sleepers left


def test_signal_exception_interrupts_blocking_calls(mem):
    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGALRM, handler)
    try:
        for call in (lambda: mem.futex_wait(0, 0), lambda: mem.wait_change(0, 0),
                     lambda: mem.completion_wait(64, mem.load32(68))):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(KeyboardInterrupt):
                call()
        assert mem.load32(72) == 0          # sleepers decremented on the way out
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_robust_mutex_survives_a_dead_holder(mem):
    mem.mutex_init(256)
    pid = _child(lambda: mem.mutex_lock(256))     # exits holding it
    _reap(pid)
    assert mem.mutex_lock(256, 1_000_000_000) == 1   # owner died, recovered
    mem.mutex_unlock(256)
    assert mem.mutex_lock(256) == 0
    mem.mutex_unlock(256)


def test_mutex_timeout_and_foreign_unlock(mem):
    mem.mutex_init(256)
    r, w = os.pipe()
    pid = _child(lambda: (mem.mutex_lock(256), os.write(w, b"x"), time.sleep(0.5)))
    os.read(r, 1)
    assert mem.mutex_lock(256, 20_000_000) == 2
    with pytest.raises(OSError):
        mem.mutex_unlock(256)
    _reap(pid)
    os.close(r)
    os.close(w)
