"""Unbounded and unclear inputs (issue #11, defects 14 and 16; SPEC §5 "Every
wrong argument ... raises a clear exception before anything is changed").

Bounded: no argument makes kproc do work (or build strings, or trees)
proportional to a hostile value before refusing it.  Clear: the exception is
a TypeError/ValueError (or KthreadError, pickle.UnpicklingError) whose
message names the argument or the environment variable.
"""

import errno
import itertools
import math
import os
import pickle
import subprocess
import sys

import pytest

import kproc
from fns import kthread as kfuncs
from fns import work as wfuncs
from kproc._core.handle import _restore_handle
from helpers import live_kthreads

pytestmark = pytest.mark.timeout(30)


# -- fake_sysfs --------------------------------------------------------------------

@pytest.mark.parametrize("possible, exc, words", [
    (None, TypeError, "possible must be an int or an iterable"),
    ("0-3", TypeError, "possible must be an int or an iterable"),
    (5000, ValueError, "possible must be between 1 and 1024"),
    (2 ** 200, ValueError, "possible must be between 1 and 1024"),
    ([0, 2 ** 200], ValueError, "a CPU of possible must be between 0 and 1023"),
    ([0, -1], ValueError, "a CPU of possible"),
    ([0, 1.5], TypeError, "a CPU of possible must be an int"),
    (itertools.count(), ValueError, "a CPU of possible must be between 0 and 1023"),
    (itertools.repeat(1), ValueError, "possible names more than"),
])
def test_fake_sysfs_bounds_possible_before_building_anything(tmp_path, possible, exc, words):
    """A tree start() would refuse is never built (kproc's masks hold 1024 CPUs,
    CONFIG_NR_CPUS), and a huge or endless argument is refused at once."""
    with pytest.raises(exc, match=words):
        kproc.fake_sysfs(tmp_path / "tree", possible=possible)
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"online": 3}, TypeError, "online must be an iterable"),
    ({"online": [7]}, ValueError, "online CPUs"),
    ({"isolated": [None]}, TypeError, "a CPU of isolated"),
    ({"nodes": [0, 1]}, TypeError, "nodes must be a mapping"),
    ({"nodes": {"0": [0, 1]}}, TypeError, "a node of nodes"),
    ({"nodes": {0: 5}}, TypeError, "the CPUs of node 0"),
])
def test_fake_sysfs_names_the_bad_argument(tmp_path, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        kproc.fake_sysfs(tmp_path / "tree", possible=2, **kwargs)
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("cpulist", ["0-4999", "0-4294967295"])
def test_start_refuses_a_tree_naming_cpus_beyond_the_masks(tmp_path, cpulist):
    """A tree written by hand (or by someone else) is bounded too: its cpulist is
    not expanded into billions of CPUs, and CPUs past 1023 are named."""
    root = kproc.fake_sysfs(tmp_path / "tree", possible=2)
    with open(os.path.join(root, "devices/system/cpu/possible"), "w") as f:
        f.write(cpulist + "\n")
    with pytest.raises(ValueError, match="sysfs_root|not a CPU list"):
        kproc.start(sysfs_root=root)


# -- names -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, args", [("%2147483648d", (1,)), ("w%.99999999d", (1,)),
                                       ("%*d", (2 ** 31, 1)), ("%-*s", (-(2 ** 40), "x"))])
def test_name_format_widths_are_checked_before_formatting(rt, fmt, args):
    """kthread.c formats into a TASK_COMM_LEN buffer (vsnprintf bounds it); here a
    field width past the name limit is refused before a 2 GiB string is built."""
    with pytest.raises(ValueError, match="namefmt .* exceeds 1024"):
        kproc.kthread_create(kfuncs.ret_value, 0, fmt, *args)
    assert live_kthreads(rt) == []


def test_a_width_within_the_limit_still_formats(rt):
    t = kproc.kthread_create(kfuncs.ret_value, 0, "w%08d", 42)
    assert kproc.get_kthread_comm(t) == "w00000042"
    assert kproc.kthread_stop(t) == -errno.EINTR


# -- durations ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", [1e300, 2 ** 2000, 1e10])
def test_huge_timeouts_are_refused_clearly(rt, bad):
    """Past MAX_SECONDS (1e9 s) a finite timeout is refused by name, never an
    OverflowError from deep inside (math.inf is how to wait forever)."""
    c = kproc.Completion()
    with pytest.raises(ValueError, match="timeout must be at most 1e\\+09 seconds"):
        kproc.wait_for_completion_timeout(c, bad)


@pytest.mark.parametrize("bad", [1e300, 2 ** 2000, math.inf])
def test_huge_delays_are_refused_clearly(rt, bad):
    w = kproc.kthread_create_worker(0, "limits")
    d = kproc.KthreadDelayedWork(wfuncs.noop)
    try:
        for fn in (kproc.kthread_queue_delayed_work, kproc.kthread_mod_delayed_work):
            with pytest.raises(ValueError, match="delay must be"):
                fn(w, d, bad)
        assert kproc.kthread_cancel_delayed_work_sync(d) is False
    finally:
        kproc.kthread_destroy_worker(w)


def test_infinite_completion_timeout_waits_like_wait_for_completion(rt):
    """wait_for_completion_timeout(c, inf) is MAX_SCHEDULE_TIMEOUT: it waits until
    complete() and returns the time left (inf), never OverflowError."""
    c = kproc.Completion()
    t = kproc.kthread_run(kfuncs.complete_then_return, (c, 0), "completer")
    assert kproc.wait_for_completion_timeout(c, math.inf) == math.inf
    kproc.kthread_stop(t)


@pytest.mark.parametrize("backend", ["futex", "posix"])
def test_msleep_refuses_a_huge_value_on_both_backends(backend):
    """msleep(1e300) raised on one backend and slept on the other: one check now."""
    with kproc.start(backend=backend):
        with pytest.raises(ValueError, match="msecs must be at most"):
            kproc.msleep(1e300)
        with pytest.raises(ValueError, match="msecs must be at most"):
            kproc.msleep_interruptible(2 ** 100)


# -- forged handles ----------------------------------------------------------------

class _Forged:
    """A pickle naming slot ``idx`` of a handle class: what a forger writes."""

    def __init__(self, cls, runtime_id, idx, gen):
        self.args = (cls, runtime_id, idx, gen)

    def __reduce__(self):
        return (_restore_handle, self.args)


@pytest.mark.parametrize("cls", [kproc.Task, kproc.Completion, kproc.KthreadWork,
                                 kproc.KthreadWorker])
@pytest.mark.parametrize("idx, gen", [(10 ** 6, 1), (-1, 1), (0, 0), (0, 2 ** 40),
                                      ("0", 1)])
def test_a_forged_handle_is_refused_when_unpickled(rt, cls, idx, gen):
    """A slot past its table used to reach the arena ("offset ...: 4 bytes there are
    out of bounds"); it is refused at unpickling, naming what is wrong."""
    blob = pickle.dumps(_Forged(cls, rt.runtime_id, idx, gen))
    with pytest.raises(pickle.UnpicklingError, match="forged or corrupt kproc"):
        pickle.loads(blob)


# -- environment variables ---------------------------------------------------------

@pytest.mark.parametrize("var, value", [
    ("KPROC_SPIN_US", "abc"), ("KPROC_SPIN_US", "-5"), ("KPROC_SPIN_US", "nan"),
    ("KPROC_SPARES", "abc"), ("KPROC_SPARES", "1.5"), ("KPROC_SPARES", "100000"),
    ("KPROC_TIMER_SPIN_US", "x"), ("KPROC_BACKEND", "fut"), ("KPROC_NATIVE", "no"),
    ("KPROC_STRICT", "yes"), ("KPROC_HUNG_TASK_TIMEOUT_SECS", "forever"),
])
def test_a_bad_environment_variable_is_named_by_start(monkeypatch, var, value):
    """Every KPROC_* variable is checked when start() begins, before kthreadd is
    forked (KPROC_SPARES=abc used to kill kthreadd with a bare int() error)."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"environment variable {var}="):
        kproc.start()


def test_a_bad_trace_variable_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("KPROC_TRACE", str(tmp_path / "missing" / "run.json"))
    with pytest.raises(ValueError, match="environment variable KPROC_TRACE"):
        kproc.start()


def test_env_values_are_named_where_they_are_read_too():
    """A variable read outside start() (an import in a fresh process) names itself."""
    code = "import kproc._core.wait as w; w.default_spin_ns()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, KPROC_SPIN_US="abc"), timeout=20)
    assert out.returncode != 0 and "environment variable KPROC_SPIN_US='abc'" in out.stderr
