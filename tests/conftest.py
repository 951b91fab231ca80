"""Shared fixtures: a runtime per test, and a leak check around every test.

The leak check fails any test that leaves a process (child of the test
process, at any depth) or a ``/dev/shm`` entry behind, 2 s after the test's
runtime was shut down.
"""

import os
import time

import psutil
import pytest

os.environ.setdefault("KPROC_STRICT", "1")

import kproc  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "runtime(**kwargs): keyword arguments for kproc.start()")


def wait_until(predicate, timeout=2.0, interval=0.002, message=None):
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Raises AssertionError with ``message`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if callable(message):
                message = message()
            raise AssertionError(message or f"timed out after {timeout}s waiting for "
                                 f"{getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


def live_kthreads(rt):
    """kthreadd's children that are kthreads (not spares), alive."""
    out = []
    for p in psutil.Process(rt.kthreadd_pid).children():
        try:
            # a spare just forked is still named kthreadd until it renames itself
            if p.status() != psutil.STATUS_ZOMBIE and \
                    p.name() not in ("kproc-spare", "kthreadd"):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def run_started(threadfn, args, name, state=None):
    """kthread_run(threadfn, args + (started,)); wait until it completed
    ``started`` and, if given, until it sleeps in ``state``.  Return: the Task."""
    started = kproc.Completion()
    task = kproc.kthread_run(threadfn, tuple(args) + (started,), name)
    kproc.wait_for_completion(started)
    if state is not None:
        wait_until(lambda: kproc.task_state(task) == state,
                   message=lambda: f"{name} never reached {state!r}")
    return task


@pytest.fixture
def rt(request):
    """A fresh runtime on the backend named by KPROC_BACKEND, shut down afterwards."""
    marker = request.node.get_closest_marker("runtime")
    kwargs = dict(marker.kwargs) if marker else {}
    runtime = kproc.start(**kwargs)
    try:
        yield runtime
    finally:
        runtime.shutdown()


def _shm_entries():
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail the test if it leaves processes or /dev/shm entries behind."""
    shm_before = _shm_entries()
    yield
    kproc.shutdown()
    me = psutil.Process()

    def no_children():
        return not [p for p in me.children(recursive=True) if p.status() != "zombie"]
    wait_until(no_children, 2.0, message=lambda: "test left processes behind: "
               + repr([(p.pid, p.name()) for p in me.children(recursive=True)]))
    wait_until(lambda: not (_shm_entries() - shm_before), 2.0,
               message=lambda: "test left /dev/shm entries behind: "
               + repr(sorted(_shm_entries() - shm_before)))
