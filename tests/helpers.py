"""What tests share: waiting on observable state, the kthreads alive, leak checks
that look only at what a test made, and real-hotplug checks that notice a CPU
change made by someone else on a shared host.

Tests import from here, never from another test module or from conftest.
"""

import ctypes
import os
import re
import select
import socket
import struct
import threading
import time

import psutil
import pytest

import kproc
from kproc._hotplug.uevent import (NETLINK_KOBJECT_UEVENT, attach_cpu_uevent_filter,
                                  parse_cpu_uevent)
from fns import work as work_fns


def process_gone(pid):
    """True once ``pid`` has exited (reaped, or a zombie).  Its parent may reap it
    between any two looks, so a vanished process counts as gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


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


# -- /dev/shm entries of this test's runtimes --------------------------------------------

SHM_DIR = "/dev/shm"
# The posix backend's semaphores are /kproc-<creator pid>-<tag>-<n> (kproc/_core/wait.py
# create_semaphores), so /dev/shm/sem.kproc-<pid>-...; the arena is a memfd, never there.
_KPROC_SHM = re.compile(r"sem\.kproc-(\d+)-[0-9a-f]+-\d+")


def kproc_shm_entries(pids):
    """The /dev/shm entries of kproc runtimes started by the processes ``pids``
    (and owned by this user): another user's or another test run's are not ours."""
    pids = {int(p) for p in pids}
    out = set()
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return out
    for name in names:
        m = _KPROC_SHM.fullmatch(name)
        if m is None or int(m.group(1)) not in pids:
            continue
        try:
            if os.stat(os.path.join(SHM_DIR, name)).st_uid == os.geteuid():
                out.add(name)
        except FileNotFoundError:
            pass
    return out


def assert_no_shm_left(pids, timeout=2.0):
    """Wait until no runtime started by ``pids`` has an entry in /dev/shm."""
    wait_until(lambda: not kproc_shm_entries(pids), timeout,
               message=lambda: "left /dev/shm entries behind: "
               + repr(sorted(kproc_shm_entries(pids))))


# -- CPU changes made by someone else ---------------------------------------------------

_FAN_CLOEXEC, _FAN_NONBLOCK, _FAN_MARK_ADD, _FAN_MODIFY = 0x1, 0x2, 0x1, 0x2
_AT_FDCWD = -100
_FAN_EVENT = struct.Struct("=IBBHQii")      # struct fanotify_event_metadata
_FAN_VERSION = 3


class ForeignHotplugWatch:
    """Notes each write to a real ``cpuN/online`` file made by a process outside
    this test's process tree (the test process, its runtimes' kthreadd and
    kthreads, the tools it started), through fanotify, which names the writer.

    A test on the real /sys is only as sound as the CPUs it toggles: another
    user's experiment, a second test run or a shell changing CPU1 meanwhile
    makes it see states it did not cause.  The writer is looked up as soon as
    the event arrives (a thread blocks on the fanotify descriptor), so a
    long-lived writer is found by its pid; one already gone counts as foreign,
    since this suite's writers (the test process, cpuhp, stress-ng) outlive
    their writes.  Needs CAP_SYS_ADMIN, which real hotplug (root) has anyway;
    where fanotify is refused, ``active`` is False and nothing is noticed.
    """

    def __init__(self, cpu_dir=REAL_CPU_DIR):
        self.foreign = []                   # "cpu1/online written by pid 123 (sh)"
        self.active = False
        self._me = os.getpid()
        self._ours_seen = set()             # writers found to be this test's processes
        self._names = {}                    # event fd's target -> "cpuN/online"
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.fanotify_init(_FAN_CLOEXEC | _FAN_NONBLOCK, os.O_RDONLY)
        if self._fd < 0:
            return
        for name in sorted(os.listdir(cpu_dir)):
            path = os.path.join(cpu_dir, name, "online")
            if name[3:].isdigit() and os.path.exists(path):
                if libc.fanotify_mark(self._fd, _FAN_MARK_ADD, ctypes.c_uint64(_FAN_MODIFY),
                                      _AT_FDCWD, path.encode()) == 0:
                    self.active = True
        if self.active:
            self._thread = threading.Thread(target=self._run, name="hotplug-watch",
                                            daemon=True)
            self._thread.start()

    def _ours(self, pid):
        # A writer once found to be ours stays ours: stress-ng's worker writes
        # many times, and the event of its last write may arrive after it exited.
        if pid == self._me or pid in self._ours_seen:
            return True
        try:
            ours = any(p.pid == self._me for p in psutil.Process(pid).parents())
        except psutil.Error:
            return False
        if ours:
            self._ours_seen.add(pid)
        return ours

    def _describe(self, pid, fd):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = "cpu?/online"
        finally:
            os.close(fd)
        try:
            who = f"pid {pid} ({psutil.Process(pid).name()})"
        except psutil.Error:
            who = f"pid {pid} (already gone)"
        return f"{'/'.join(target.split('/')[-2:])} written by {who}"

    def _run(self):
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            off = 0
            while off + _FAN_EVENT.size <= len(buf):
                size, version, _, _, _, fd, pid = _FAN_EVENT.unpack_from(buf, off)
                if version != _FAN_VERSION or size < _FAN_EVENT.size:
                    return
                off += size
                if self._ours(pid):
                    if fd >= 0:
                        os.close(fd)
                    continue
                self.foreign.append(self._describe(pid, fd) if fd >= 0
                                    else f"a cpuN/online written by pid {pid}")

    def close(self):
        """Stop watching (idempotent)."""
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            if self.active:
                self._thread.join(5)
            for fd in (self._fd, self._stop_r, self._stop_w):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._stop_r = self._stop_w = -1


FOREIGN_HOTPLUG = pytest.StashKey()


def watch_foreign_hotplug(request):
    """Watch the real CPUs for the rest of ``request``'s test: a test that fails
    after a CPU change it did not make is reported skipped, saying who made it
    (tests/conftest.py's report hook), instead of failing for someone else.
    Return: the ForeignHotplugWatch (closed when the test ends)."""
    watch = ForeignHotplugWatch()
    request.node.stash[FOREIGN_HOTPLUG] = watch
    request.addfinalizer(watch.close)
    return watch


@pytest.fixture
def foreign_hotplug(request):
    """The fixture form of :func:`watch_foreign_hotplug`, for real-hotplug tests."""
    return watch_foreign_hotplug(request)


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
        watch_foreign_hotplug(request)
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


# -- the test's own uevent listener -------------------------------------------------

class UeventCounter:
    """The test's own uevent listener: (SEQNUM, online, cpu) of every CPU change."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                  NETLINK_KOBJECT_UEVENT)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 1))
        attach_cpu_uevent_filter(self.sock)
        self.sock.settimeout(0.2)
        self.notes, self.lost, self._stop = [], False, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                msg = self.sock.recv(8192)
            except socket.timeout:
                continue
            except OSError:
                self.lost = True
                continue
            note = parse_cpu_uevent(msg)
            if note is not None:
                self.notes.append(note)

    def count(self, cpu, online):
        return sum(1 for _s, on, c in self.notes if c == cpu and on == online)

    def close(self, settle=0.0):
        """Stop listening, after ``settle`` seconds for the last uevents of a final write."""
        time.sleep(settle)
        self._stop = True
        self._thread.join(2)
        self.sock.close()
