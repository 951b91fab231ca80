"""Shared fixtures: a runtime per test, and a leak check around every test.

The leak check fails any test that leaves a process (child of the test
process, at any depth) or a ``/dev/shm`` entry of its own runtimes behind, 2 s
after the test's runtime was shut down.  It looks only at what the test made
(entries named for runtimes started by the test process or its descendants,
owned by this user), so another user's kproc on the same host cannot fail it.

A real-hotplug test that fails after a CPU change someone else made
(``helpers.watch_foreign_hotplug``) is reported skipped, saying who made it.
"""

import os

import psutil
import pytest

os.environ.setdefault("KPROC_STRICT", "1")

import kproc  # noqa: E402
from helpers import FOREIGN_HOTPLUG, assert_no_shm_left, wait_until  # noqa: E402
from helpers import foreign_hotplug  # noqa: E402,F401 (a fixture, for every test module)


def pytest_configure(config):
    config.addinivalue_line("markers", "runtime(**kwargs): keyword arguments for kproc.start()")
    if os.environ.get("KPROC_NATIVE") == "0":
        # The pure-path run (make test-pure): a test that asks for the futex backend
        # gets the posix path with start()'s one RuntimeWarning, by design.
        config.addinivalue_line("filterwarnings", "ignore:kproc. the C extension kproc._native "
                                "is switched off by KPROC_NATIVE=0:RuntimeWarning")


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


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail the test if it leaves processes or /dev/shm entries of its runtimes behind."""
    yield
    kproc.shutdown()
    me = psutil.Process()
    creators = {me.pid} | {p.pid for p in me.children(recursive=True)}

    def no_children():
        return not [p for p in me.children(recursive=True) if p.status() != "zombie"]
    wait_until(no_children, 2.0, message=lambda: "test left processes behind: "
               + repr([(p.pid, p.name()) for p in me.children(recursive=True)]))
    assert_no_shm_left(creators, 2.0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Turn the failure of a real-hotplug test into a skip when a CPU was changed
    meanwhile by a process that is not the test's (a shared host)."""
    outcome = yield
    report = outcome.get_result()
    watch = item.stash.get(FOREIGN_HOTPLUG, None)
    if watch is not None and report.failed and call.when in ("setup", "call") \
            and watch.foreign:
        changes = "; ".join(watch.foreign[:5])
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           "Skipped: a CPU changed under this real-hotplug test by "
                           f"someone else ({changes}); its result means nothing")
