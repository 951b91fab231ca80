"""Shared fixtures: a runtime per test, and a leak check around every test.

The leak check fails any test that leaves a process (child of the test
process, at any depth) or a ``/dev/shm`` entry behind, 2 s after the test's
runtime was shut down.
"""

import os

import psutil
import pytest

os.environ.setdefault("KPROC_STRICT", "1")

import kproc  # noqa: E402
from helpers import wait_until  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "runtime(**kwargs): keyword arguments for kproc.start()")


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


@pytest.fixture
def worker(rt):
    """A kthread worker named "kw/3" on ``rt``, destroyed afterwards if still alive."""
    w = kproc.kthread_create_worker(0, "kw/%d", 3)
    yield w
    try:
        if w.task is not None:
            kproc.kthread_destroy_worker(w)
    except kproc.KthreadError:
        pass


@pytest.fixture
def log_path(tmp_path):
    """A file the works of ``fns.work`` append lines to (read with ``read_lines``)."""
    return str(tmp_path / "log")


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
