"""Faults of the runtime itself: start/shutdown leaks, owner killed in start(), shutdown
interrupted, the liveness check, forked children (SPEC §5; issue #11 items 1, 2, 5, 7, 10)."""

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import kproc
from fns import kthread as kfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)

TESTS = os.path.dirname(os.path.abspath(__file__))
KPROC_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(kproc.__file__)))


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def _arena_mappings():
    with open("/proc/self/maps") as f:
        return sum("kproc-arena" in line for line in f)


def test_start_shutdown_cycles_leak_no_fd_and_no_mapping():
    """Item 1: every shutdown() unmaps the arena and closes every descriptor, even
    while a handle of that runtime (holding its Mem) is still alive."""
    kproc.start().shutdown()                     # warm-up: imports, caches
    fds, vm, maps = _fds(), _status("VmSize"), _arena_mappings()
    keep = []
    for _ in range(40):
        with kproc.start():
            keep.append(kproc.Completion())      # outlives its runtime
            kproc.kthread_stop(kproc.kthread_create(kfuncs.ret_value, 0, "cycle"))
    assert _fds() == fds
    assert _arena_mappings() == maps == 0
    # Each arena maps ~100 MiB of address space: 40 leaked ones would be 4 GiB.
    assert _status("VmSize") - vm < 64 * 1024
    with pytest.raises(kproc.KthreadError) as ei:
        kproc.complete(keep[0])
    assert ei.value.errno == errno.ESRCH


def _marked_pids(mark):
    """Live processes whose environment carries ``mark`` (kthreadd inherits it)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if mark in f.read():
                    with open(f"/proc/{name}/stat") as s:
                        if s.read().rpartition(")")[2].split()[0] not in ("Z", "X"):
                            pids.append(int(name))
        except OSError:
            pass
    return pids


START_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {parent!r})
    import kproc
    sys.stdout.write("go\\n"); sys.stdout.flush()
    kproc.start(backend={backend!r})
    sys.stdout.write("up\\n"); sys.stdout.flush()
    sys.stdin.read()
""")


@pytest.mark.parametrize("backend", ["futex", "posix"])
def test_owner_killed_during_start_leaves_nothing(backend):
    """Item 2: SIGKILL of the owner at any moment of start() leaves no semaphore in
    /dev/shm and no kthreadd (SPEC §5: "nothing is left in /dev/shm")."""
    from kproc._core.native import load_mem_class
    if backend == "futex" and load_mem_class() is None:
        pytest.skip("futex backend needs the native extension")
    rng = random.Random(11)
    script = START_SCRIPT.format(parent=KPROC_PARENT, backend=backend)
    for trial in range(16):
        mark = f"KPROC_FAULT_MARK={uuid.uuid4().hex}"
        env = dict(os.environ, KPROC_FAULT_MARK=mark.split("=", 1)[1])
        owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env)
        try:
            assert owner.stdout.readline() == b"go\n"
            time.sleep(rng.uniform(0, 0.040))    # somewhere inside start()
            owner.kill()
            owner.wait()
            tag = f"sem.kproc-{owner.pid}-"
            wait_until(lambda: not [n for n in os.listdir("/dev/shm") if n.startswith(tag)],
                       2.0, message=lambda: f"trial {trial}: semaphores left in /dev/shm: "
                       + repr([n for n in os.listdir("/dev/shm") if n.startswith(tag)]))
            wait_until(lambda: not _marked_pids(mark.encode()), 2.0,
                       message=f"trial {trial}: kthreadd outlived an owner killed in start()")
        finally:
            owner.kill()
            owner.wait()
            owner.stdin.close()
            owner.stdout.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def test_interrupted_shutdown_still_kills_kthreadd():
    """Item 5: a Ctrl-C while shutdown() waits for kthreadd (the second Ctrl-C of an
    atexit shutdown) still kills kthreadd before the arena is unmapped."""
    rt = kproc.start()
    task = kproc.kthread_run(kfuncs.loop_until_stop, None, "victim")
    wait_until(lambda: task.pid)
    kpid, tpid = rt.kthreadd_pid, task.pid
    os.kill(kpid, signal.SIGSTOP)                # kthreadd cannot act on the EOF
    old = signal.signal(signal.SIGALRM, _raise_interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            rt.shutdown(timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert rt.closed
    from kproc._core.syscalls import pid_alive
    wait_until(lambda: not pid_alive(kpid) and not pid_alive(tpid), 2.0,
               message="kthreadd or its kthread outlived an interrupted shutdown")
    kproc.start().shutdown()                    # this process can start again


def test_liveness_check_does_not_use_subprocess_wait_lock(rt):
    """Item 7: the owner watches kthreadd without Popen.poll()/wait(), whose private
    lock a Ctrl-C can leave held: with that lock held, kthreadd's death is still
    seen by every wait (SPEC §5: within 1 s) and shutdown() does not hang."""
    lock = rt.owner.popen._waitpid_lock
    assert lock.acquire(timeout=1)              # what a leaked lock looks like
    try:
        c = kproc.Completion()
        threading.Timer(0.2, os.kill, (rt.kthreadd_pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(kproc.KthreadError) as ei:
            kproc.wait_for_completion(c)
        assert ei.value.errno == errno.ESRCH
        assert time.monotonic() - t0 < 1.5
        done = threading.Event()
        th = threading.Thread(target=lambda: (rt.shutdown(), done.set()), daemon=True)
        th.start()
        assert done.wait(5), "shutdown() hung on subprocess's wait lock"
    finally:
        lock.release()


FORK_SCRIPT_RESULT = "ok"


def _in_forked_child(fn):
    """Run ``fn()`` in a forked child; return what it wrote (or its traceback)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = repr(fn())
        except BaseException as exc:   # report, never return into pytest
            out = f"raised {type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


def test_forked_child_inherits_no_runtime(rt):
    """Item 10: a child forked from the owner is not part of the parent's runtime
    (as multiprocessing's child inherits neither its parent's children nor its
    finalizers): its inherited handles raise ESRCH, start() works in it, and its
    Completion() lives in its own runtime, never in the parent's arena."""
    inherited = kproc.Completion()

    def child():
        out = []
        try:
            kproc.complete(inherited)
        except kproc.KthreadError as exc:
            out.append(("inherited", exc.errno, "parent" in str(exc)))
        mine = kproc.start()
        c = kproc.Completion()
        out.append(("own runtime", mine.kthreadd_pid != rt.kthreadd_pid,
                    c._rt is mine, kproc.complete(c) is None))
        t = kproc.kthread_create(kfuncs.ret_value, 4, "child's")
        out.append(("kthread", kproc.kthread_stop(t)))
        mine.shutdown()
        return out

    got = _in_forked_child(child)
    assert got == repr([("inherited", errno.ESRCH, True), ("own runtime", True, True, True),
                        ("kthread", -errno.EINTR)])
    # The parent's runtime is untouched by the child's exit.
    kproc.complete(inherited)
    kproc.wait_for_completion(inherited)
    assert kproc.kthread_stop(kproc.kthread_create(kfuncs.ret_value, 0, "p")) == -errno.EINTR


def test_forked_child_can_start_after_parent_shut_down():
    """Item 10: the child of an owner whose runtime has since been shut down gets no
    EBUSY from start()."""
    rt = kproc.start()
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(go_w)
        os.read(go_r, 1)                          # the parent has shut down
        try:
            with kproc.start() as mine:
                out = "ok" if mine.role.value == "owner" else "bad role"
        except BaseException as exc:
            out = f"raised {type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    os.close(go_r)
    rt.shutdown()
    os.write(go_w, b"g")
    os.close(go_w)
    got = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert got == "ok"


WAITERS_SCRIPT = textwrap.dedent("""
    import errno, sys, threading, time
    sys.path.insert(0, {parent!r})
    import kproc

    def waiter(c, out):
        try:
            kproc.wait_for_completion(c)
            out.append("returned")
        except kproc.KthreadError as exc:
            out.append(exc.errno)
        except BaseException as exc:
            out.append(repr(exc))

    def asleep(tid):
        with open(f"/proc/self/task/{{tid}}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "S"

    for _ in range({rounds}):
        rt = kproc.start()
        out = []
        threads = [threading.Thread(target=waiter, args=(kproc.Completion(), out))
                   for _ in range(3)]
        for t in threads:
            t.start()
        end = time.monotonic() + 5
        while not all(t.native_id and asleep(t.native_id) for t in threads):
            assert time.monotonic() < end, "the waiters never slept"
            time.sleep(0.001)
        rt.shutdown()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads), "a wait outlived shutdown()"
        assert out == [errno.ESRCH] * 3, out
    print("ok")
""")


def test_shutdown_under_threads_asleep_in_waits_ends_each_wait():
    """shutdown() while other threads of the owner sleep in wait_for_completion():
    each wait ends with KthreadError(ESRCH) (SPEC §5: a fault ends every wait).
    Closing a posix semaphore under a thread blocked in sem_timedwait() is
    undefined (sem_close(3)) and crashed the process, a pool's collector thread
    tearing down after the runtime had gone: the semaphores now close when the
    last such thread leaves, and the mapping stays for it.  In a child process,
    so that a crash fails the test instead of ending the run."""
    script = WAITERS_SCRIPT.format(parent=KPROC_PARENT, rounds=10)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0 and done.stdout.strip() == "ok", \
        f"rc {done.returncode}: {done.stdout}{done.stderr[-2000:]}"
