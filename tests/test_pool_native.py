"""The pool's C slot operations (native/pool.c) and their pure-Python twins.

Where the extension is built the caller places and reaps, and the workers
claim, run and publish, in C; with ``KPROC_NATIVE=0`` everything runs in
Python.  Both must give a user the same outcomes, exceptions and tracebacks
included (SPEC §3 "Pools"): the same scenario runs here on the native path
and in a child process on the pure one, and the answers are compared.  The C
methods' own checks (bad offsets, a call too big for a slot, a lost claim)
are tested on a bare mapping.
"""

import json
import os
import subprocess
import sys

import pytest

import kproc
from fns import pool as pf
from kproc._core.native import native
from kproc._pool.channel import DRAIN, HEADER, SLOT, SLOT_SIZE, INLINE_MAX, PoolMemory

pytestmark = pytest.mark.timeout(60)
need_native = pytest.mark.skipif(native is None or not hasattr(native, "pool_layout"),
                                 reason="kproc._native is not built here")

HERE = os.path.dirname(os.path.abspath(__file__))


def scenario():
    """What a user sees of a pool: the fast paths' every branch.  Return: a JSON-able list."""
    out = []
    with kproc.KthreadPoolExecutor(2) as ex:
        out.append(ex.submit(pf.add, 1, b=2).result(timeout=10))      # kwargs; first: not cached
        out.append(ex.submit(pf.add, 1, b=2).result(timeout=10))      # cached: all in C
        out.append(ex.submit(pf.noop).result(timeout=10))             # no arguments, None
        out.append(len(ex.submit(pf.big, INLINE_MAX + 1).result(timeout=10)))   # side channel
        out.append(len(ex.submit(pf.big, INLINE_MAX - 100).result(timeout=10)))
        out.append(list(ex.map(pf.square, range(300))) == [i * i for i in range(300)])
        out.append([len(b) for b in ex.map(pf.big, [10, INLINE_MAX + 5, 0, 1 << 20])])
        try:
            ex.submit(pf.boom, "bad").result(timeout=10)
        except pf.Boom as exc:
            out.append(["raised", str(exc), "raise Boom(msg)" in str(exc.__cause__)])
        got = []
        try:
            for v in ex.map(pf.echo_or_boom, [1, 2, "boom", 4]):
                got.append(v)
        except pf.Boom as exc:
            got.append(["raised", str(exc), "in echo_or_boom" in str(exc.__cause__)])
        out.append(got)
        out.append(type(ex.submit(pf.raise_base, "exit").exception(timeout=10)).__name__)
        out.append(ex.submit(pf.echo, 7).result(timeout=10))          # the worker went on
        fast = ex._pool.engine.pm.fast
    return [out, fast]


def test_native_and_pure_paths_give_the_same_outcomes(rt):
    """The same calls on the C slot operations (here) and on Python's (KPROC_NATIVE=0)."""
    here = scenario()
    env = dict(os.environ, KPROC_NATIVE="0", PYTHONPATH=HERE + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    env.pop("KPROC_STRICT", None)       # the pure path warns once, on purpose
    code = ("import json, kproc, test_pool_native as t\n"
            "with kproc.start(backend='posix'):\n"
            "    print(json.dumps(t.scenario()))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=HERE, text=True,
                          capture_output=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    pure = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pure[1] is False                         # the child ran the Python path
    assert here[1] is (native is not None and hasattr(native, "pool_layout"))
    assert json.loads(json.dumps(here[0])) == pure[0]
    assert here[0][0] == 3 and here[0][5] is True
    assert here[0][6] == [10, INLINE_MAX + 5, 0, 1 << 20]
    assert here[0][7] == ["raised", "bad", True]
    assert here[0][8] == [1, 2, ["raised", "boom", True]]
    assert here[0][9] == "SystemExit"


@pytest.fixture
def pm():
    pool = PoolMemory.create(4, 2)
    yield pool
    pool.close()


@need_native
def test_place_and_reap_round_trip_in_c(pm):
    mem = pm.mem
    off = pm.slot_off(1)
    act = pm.drain_off(0) + DRAIN.active
    assert mem.pool_place(off, 1, b"hello", 7, act) == 0        # the drain must be queued
    assert mem.pool_place(pm.slot_off(2), 1, b"", 8, act) == 1  # queued already
    assert mem.load32(off + SLOT.state) == 1 and mem.load64(off + SLOT.ticket) == 7
    assert pm.read_inline(off, 5) == b"hello" and pm.read_body(off)[:3] == (1, 0, 5)
    assert mem.pool_place(pm.slot_off(3), 0, b"x", 9, -1) == 0  # not a map call
    mem.store32(off + SLOT.state, 3)                            # as a worker publishes
    pm.write_body(off, 1, 1, 3, None)
    seq = mem.load64(off + SLOT.use_seq)
    assert mem.pool_reap(off) == (1, b"hel")
    assert mem.load32(off + SLOT.state) == 0 and mem.load64(off + SLOT.use_seq) == seq + 1
    pm.write_body(off, 1, 1, 10, (os.getpid(), 5, 6))            # in the side channel
    assert mem.pool_reap(off) is None                           # Python's to take


@need_native
def test_place_reinits_the_completion_and_reports_a_park_request(pm):
    """With the arena's words (here in a second pool mapping): the slot's completion
    is re-initialised before the call is published (reinit_completion(),
    kernel/sched/completion.c), and a park request seen after it adds 2."""
    mem, other = pm.mem, PoolMemory.create(1, 1)
    try:
        amem, comp, flags = other.mem, other.slot_off(0) + 64, other.slot_off(0) + 128
        amem.store32(comp, 5)
        off, act = pm.slot_off(0), pm.drain_off(1) + DRAIN.active
        assert mem.pool_place(off, 1, b"a", 1, act, amem, comp, flags, 4) == 0
        assert amem.load32(comp) == 0 and mem.load32(off + SLOT.state) == 1
        amem.store32(flags, 4)
        assert mem.pool_place(pm.slot_off(1), 1, b"b", 2, act, amem, comp, flags, 4) == 3
        with pytest.raises(TypeError):
            mem.pool_place(pm.slot_off(2), 0, b"c", 3, -1, amem)        # 5 or 9 arguments
        with pytest.raises(TypeError):
            mem.pool_place(pm.slot_off(2), 0, b"c", 3, -1, "not a Mem", 0, 0, 4)
        assert mem.load32(pm.slot_off(2) + SLOT.state) == 0             # nothing changed
    finally:
        other.close()


@need_native
def test_spin_done_returns_the_state_once_the_call_is_over(pm):
    """A direct waiter's spin ends at DONE (or CANCELLED, FREE), else after its budget."""
    mem, off = pm.mem, pm.slot_off(0)
    for state in (0, 3, 4):
        mem.store32(off + SLOT.state, state)
        assert mem.pool_spin_done(off, 10**9) == state            # at once
    mem.store32(off + SLOT.state, 2)
    assert mem.pool_spin_done(off, 1000) == 2                      # RUNNING: spun out
    with pytest.raises(ValueError):
        mem.pool_spin_done(off + 8, 0)


@need_native
def test_c_slot_operations_refuse_bad_input(pm):
    mem = pm.mem
    with pytest.raises(ValueError, match="does not fit"):
        mem.pool_place(pm.slot_off(0), 0, b"x" * (INLINE_MAX + 1), 1, -1)
    with pytest.raises(ValueError):
        mem.pool_place(pm.slot_off(3) + SLOT_SIZE, 0, b"x", 1, -1)  # past the last slot
    with pytest.raises(ValueError):
        mem.pool_reap(pm.slot_off(0) + 8)                           # not a slot's start
    with pytest.raises(TypeError):
        mem.pool_run(pm.slot_off(0), [])
    with pytest.raises(TypeError):
        mem.pool_drain(pm.drain_off(0), 0, 2, pm.slots_base, "not a Mem", 0, 1, 0, {})
    assert mem.load32(pm.slot_off(0) + SLOT.state) == 0             # nothing changed


@need_native
def test_pool_run_claims_only_a_queued_slot(pm):
    """A cancel that won the compare-and-swap first means the call never starts."""
    mem = pm.mem
    off = pm.slot_off(0)
    assert mem.pool_run(off, {}) == -1                  # FREE: nothing to claim
    mem.pool_place(off, 0, b"\x03\x00\x00\x00abc", 1, -1)
    mem.store32(off + SLOT.state, 4)                    # CANCELLED by the caller
    assert mem.pool_run(off, {}) == -1
    mem.store32(off + SLOT.state, 1)
    mem.store32(HEADER.broken, 1)
    assert mem.pool_run(off, {}) == -1                  # a broken pool runs nothing
    mem.store32(HEADER.broken, 0)
    assert mem.pool_run(off, {}) == -2                  # not in the cache: Python's path
    assert mem.load32(off + SLOT.state) == 2            # claimed (RUNNING) meanwhile


@need_native
def test_native_layout_is_the_records_layout():
    layout = native.pool_layout()
    assert layout["SLOT_SIZE"] == SLOT_SIZE
    assert layout["DRAIN.next_ticket"] == DRAIN.next_ticket
    assert layout["HEADER.caller_cpu"] == HEADER.caller_cpu
    assert all(layout[f"SLOT.{f}"] == getattr(SLOT, f) for f in ("state", "ticket", "use_seq"))


def test_unbuilt_extension_means_the_python_slot_path():
    pool = PoolMemory.create(2, 1)
    try:
        assert pool.fast is hasattr(pool.mem, "pool_place")
        assert pool.mem.load64(pool.drain_off(0) + DRAIN.next_ticket) == 1    # from ticket 1
    finally:
        pool.close()
