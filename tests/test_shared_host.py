"""A suite that passes on a shared host: the leak check looks only at what the
test made, and a real CPU change made by someone else is noticed (SPEC §8)."""

import os
import subprocess
import sys

import posix_ipc
import pytest

import kproc
from helpers import (REAL_CPU_DIR, ForeignHotplugWatch, kproc_shm_entries,
                     real_hotplug_cpu, wait_until)

pytestmark = pytest.mark.timeout(30)

_others = []


@pytest.fixture(scope="module", autouse=True)
def _remove_others_semaphores():
    """Module scope: torn down after every test's leak check has run."""
    yield
    for name in _others:
        try:
            posix_ipc.unlink_semaphore(name)
        except posix_ipc.ExistentialError:
            pass


def _semaphore_of_another_runtime():
    """A semaphore named as kproc names them, for a runtime of another process
    (pid 1 cannot be this test's), created while this test runs and left there."""
    name = f"/kproc-1-{os.urandom(4).hex()}-0"
    posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600).close()
    _others.append(name)
    return "sem." + name[1:]


def test_another_runtimes_semaphore_is_not_this_tests_leak():
    """Another user's kproc starting while this test runs leaves its semaphores in
    /dev/shm for a moment (or forever, if it was killed): not this test's leak,
    so the autouse leak check, run after this test, must not fail it."""
    other = _semaphore_of_another_runtime()
    assert other in os.listdir("/dev/shm")
    assert other not in kproc_shm_entries({os.getpid()})
    assert other in kproc_shm_entries({1})


def test_the_leak_check_sees_this_processes_runtimes():
    """The check still sees a posix runtime's semaphores while they exist: they
    are named for the process that called start()."""
    with kproc.start(backend="posix"):
        pass
    assert kproc_shm_entries({os.getpid()}) == set()      # unlinked once kthreadd is up
    name = f"/kproc-{os.getpid()}-{os.urandom(4).hex()}-0"
    posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600).close()
    try:
        assert kproc_shm_entries({os.getpid()}) == {"sem." + name[1:]}
    finally:
        posix_ipc.unlink_semaphore(name)


# A writer outside the test's process tree: its parent exits at once, so it is
# re-parented to init (or a subreaper) and is no descendant of the test.
_OUTSIDER = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
time.sleep(0.05)
with open(sys.argv[1], "w") as f:
    f.write("1")
time.sleep(2)
"""


@pytest.mark.skipif(real_hotplug_cpu() is None, reason="needs real hotplug (root, cpuN/online)")
def test_a_cpu_write_by_a_process_outside_the_test_is_noticed():
    """The write rewrites "1" to an online CPU (the kernel does nothing), so no CPU
    changes; the watch names the outsider and not the test's own write."""
    cpu = real_hotplug_cpu()
    online = f"{REAL_CPU_DIR}/cpu{cpu}/online"
    watch = ForeignHotplugWatch()
    try:
        assert watch.active
        with open(online, "w") as f:         # the test's own write: not foreign
            f.write("1")
        subprocess.run([sys.executable, "-c", _OUTSIDER, online], check=True, timeout=10)
        wait_until(lambda: watch.foreign, 5.0, message="the outsider's write went unnoticed")
        assert len(watch.foreign) == 1
        assert watch.foreign[0].startswith(f"cpu{cpu}/online written by pid ")
        assert "python" in watch.foreign[0]
    finally:
        watch.close()
