"""What tests share: waiting on observable state, the kthreads alive, real-hotplug checks.

Tests import from here, never from another test module or from conftest.
"""

import os
import time

import psutil

import kproc
from fns import work as work_fns


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


def blocked(worker):
    """Queue a work that blocks ``worker``; return the Completion releasing it."""
    started, release = kproc.Completion(), kproc.Completion()
    kproc.kthread_queue_work(worker, kproc.KthreadWork(work_fns.block, (started, release)))
    kproc.wait_for_completion(started)
    return release


def wait_past(t):
    """Wait until the monotonic clock passes ``t`` (for tests whose property is time)."""
    wait_until(lambda: time.monotonic() > t, timeout=5.0, interval=0.001)


REAL_CPU_DIR = "/sys/devices/system/cpu"


def real_hotplug_cpu():
    """A CPU whose real online file we may write, or None."""
    if os.environ.get("KPROC_REAL_HOTPLUG", "1") == "0" or os.geteuid() != 0:
        return None
    for cpu in sorted(kproc._core.topology.Topology().possible() - {0}):
        path = f"{REAL_CPU_DIR}/cpu{cpu}/online"
        if os.access(path, os.W_OK):
            return cpu
    return None


def all_online(root):
    """Write 1 to every online file under ``root`` that says 0."""
    cpu_dir = os.path.join(root, "devices/system/cpu")
    for name in os.listdir(cpu_dir):
        path = os.path.join(cpu_dir, name, "online")
        if name[3:].isdigit() and os.path.exists(path):
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:
                f.write("1")
    if root != "/sys":
        kproc._core.topology.Topology(root)._rewrite_online()


# -- hotplug tests: a runtime on a fake tree, and on the real /sys where we may -------

HP_MODES = ["fake"] + (["real"] if real_hotplug_cpu() is not None else [])


class Hotplug:
    """What a hotplug test needs: the runtime, the CPU it toggles, where callbacks log."""

    def __init__(self, rt, root, cpu, logdir):
        self.rt, self.root, self.cpu, self.logdir = rt, root, cpu, logdir

    def log(self):
        """The callbacks' log: (what, cpu, online) per line (more columns for where())."""
        from fns import hotplug as hpfuncs
        return hpfuncs.read_log(self.logdir)

    def what(self):
        """The log's first column, plus the CPU."""
        return [(w, int(c)) for w, c, *_ in self.log()]

    def clear(self):
        try:
            os.unlink(os.path.join(self.logdir, "log"))
        except FileNotFoundError:
            pass

    def fail(self, what, cpu):
        open(os.path.join(self.logdir, f"fail-{what}-{cpu}"), "w").close()

    def write_online(self, value):
        """Change the CPU behind kproc's back (a fake tree's aggregate file too)."""
        with open(os.path.join(self.root, f"devices/system/cpu/cpu{self.cpu}/online"),
                  "w") as f:
            f.write(str(value))
        if self.root != "/sys":
            self.rt.topology._rewrite_online()

    def online(self):
        return self.rt.topology.is_online(self.cpu)

    @property
    def real(self):
        return self.root == "/sys"


def hotplug_env(request, tmp_path, monkeypatch):
    """Fixture body (``hp = pytest.fixture(params=HP_MODES)(hotplug_env)``): a runtime
    on a fake 4-CPU tree or the real /sys, every CPU brought back online after."""
    if request.param == "real":
        root, cpu = "/sys", real_hotplug_cpu()
    else:
        root = kproc.fake_sysfs(tmp_path / "sys", possible=4)
        cpu = 1
    logdir = tmp_path / "log"
    logdir.mkdir()
    monkeypatch.setenv("KPROC_HP_DIR", str(logdir))
    monkeypatch.setenv("KPROC_HP_SYSFS", root)
    all_online(root)
    runtime = kproc.start(sysfs_root=root)
    try:
        yield Hotplug(runtime, root, cpu, str(logdir))
    finally:
        try:
            runtime.shutdown()
        finally:
            all_online(root)
