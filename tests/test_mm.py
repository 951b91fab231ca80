"""Borrowed address spaces: get_task_mm, kthread_use_mm, copy_from_user/copy_to_user
(SPEC §3 "Borrowed memory"; kthread.c 6.15 kthread_use_mm(), kthread_unuse_mm())."""

import ctypes
import errno
import mmap
import os
import pickle
import subprocess
import sys

import pytest

import kproc
from kproc._kthread import mm as kmm
from fns import mm as mfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)
PAGE = mmap.PAGESIZE


def _result(task):
    wait_until(lambda: task.exit_result is not None, 10)
    return kproc.kthread_stop(task)


def test_a_kthread_copies_between_the_callers_buffers(rt):
    """copy_from_user()/copy_to_user() on an adopted mm reach the caller's memory;
    copy_to_user returns the bytes not copied, 0 on success (uaccess.h)."""
    src = ctypes.create_string_buffer(b"hello from the caller\0" * 400)    # > 2 pages
    dst = ctypes.create_string_buffer(len(src))
    mm = kproc.get_task_mm(os.getpid())
    task = kproc.kthread_run(mfuncs.copy_across,
                             (mm, ctypes.addressof(src), ctypes.addressof(dst), len(src)), "mm")
    assert _result(task) == 0
    assert dst.raw == src.raw
    kproc.mmput(mm)


def test_a_copy_stops_at_the_first_unreachable_page(rt):
    area = mmap.mmap(-1, 2 * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    assert libc.mprotect(addr + PAGE, PAGE, 0) == 0              # PROT_NONE
    try:
        mm = kproc.get_task_mm(os.getpid())
        start = addr + PAGE - 10
        r = kproc.kthread_run(mfuncs.read_len, (mm, start, 100), "mmr")
        w = kproc.kthread_run(mfuncs.write_left, (mm, start, 100), "mmw")
        bad = kproc.kthread_run(mfuncs.read_len, (mm, 8, 64), "mmbad")
        assert _result(r) == 10
        assert _result(w) == 90
        assert _result(bad) == 0
        assert area[PAGE - 10:PAGE] == b"x" * 10
    finally:
        libc.mprotect(addr + PAGE, PAGE, 3)
        area.close()


@pytest.mark.parametrize("path", ["native", "pure"])
def test_both_copy_paths_stop_at_a_protected_page(path):
    """Without the C extension (``KPROC_NATIVE=0``) the copies take the same system
    calls through ctypes: a PROT_NONE page ends a read and a read-only one a write
    (copy_from_user faults there, lib/usercopy.c), where /proc/PID/mem, which
    forces access as a debugger does, read and wrote through both."""
    if path == "native" and kmm._vm is None:
        pytest.skip("the C extension is not built (KPROC_NATIVE=0)")
    def copy(addr, view, write):
        if path == "pure":
            return kmm._proc_mem(os.getpid(), addr, view, write)
        return kmm._vm.process_vm_write(os.getpid(), addr, view) if write \
            else kmm._vm.process_vm_read(os.getpid(), addr, view)
    area = mmap.mmap(-1, 3 * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
    area[:PAGE] = b"a" * PAGE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    assert libc.mprotect(addr + PAGE, PAGE, 0) == 0              # PROT_NONE
    assert libc.mprotect(addr + 2 * PAGE, PAGE, 1) == 0          # PROT_READ
    try:
        buf = bytearray(100)
        assert copy(addr + PAGE - 10, memoryview(buf), False) == 10
        assert bytes(buf[:10]) == b"a" * 10
        assert copy(addr + 3 * PAGE - 10, memoryview(b"y" * 10), True) == 0
        assert copy(addr + PAGE - 4, memoryview(b"zzzz"), True) == 4
        assert area[PAGE - 4:PAGE] == b"zzzz"
    finally:
        libc.mprotect(addr + PAGE, 2 * PAGE, 3)
        area.close()


def test_a_dead_process_gives_a_short_copy_not_a_hang(rt):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mm = kproc.get_task_mm(child.pid)
    finally:
        child.kill()
        child.wait()
    task = kproc.kthread_run(mfuncs.read_len, (mm, 4096, 16), "mmdead")
    # kthread_use_mm() of a process that is gone: ESRCH, the threadfn's exception
    assert _result(task) == -errno.EFAULT
    with pytest.raises(kproc.KthreadError) as ei:
        kproc.get_task_mm(child.pid)
    assert ei.value.errno == errno.ESRCH


def test_a_process_that_dies_while_adopted_gives_short_copies(rt):
    """copy_from_user() returns nothing and copy_to_user() reports every byte not
    copied once the adopted process is gone: no crash, no hang."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ready, go = kproc.Completion(), kproc.Completion()
    try:
        mm = kproc.get_task_mm(child.pid)
        task = kproc.kthread_run(mfuncs.read_after_go, (mm, 4096, 16, ready, go), "mmgone")
        kproc.wait_for_completion(ready)
    finally:
        child.kill()
        child.wait()
    kproc.complete(go)
    assert _result(task) == 0 + 100 * 2


def test_the_proc_mem_fallback_copies_and_stops_short(rt, monkeypatch):
    """Without the extension the copies go through /proc/PID/mem, page by page."""
    src = ctypes.create_string_buffer(b"fallback" * 1000)
    dst = ctypes.create_string_buffer(len(src))
    got = kmm._proc_mem(os.getpid(), ctypes.addressof(src), memoryview(dst).cast("B"), False)
    assert got == len(src) and dst.raw == src.raw
    assert kmm._proc_mem(os.getpid(), 8, memoryview(bytearray(16)), False) == 0
    assert kmm._proc_mem(2**22 + 12345, 4096, memoryview(bytearray(16)), False) == 0


def test_copies_without_kthread_use_mm_raise(rt):
    task = kproc.kthread_run(mfuncs.copy_without_mm, None, "nomm")
    assert _result(task) == 1
    with pytest.raises(RuntimeError, match="must be called from a kthread"):
        kproc.copy_from_user(0, 1)
    with pytest.raises(RuntimeError):
        kproc.kthread_use_mm(kproc.get_task_mm(os.getpid()))


def test_mm_is_a_picklable_handle_and_mmput_ends_it(rt):
    mm = kproc.get_task_mm(os.getpid())
    copy = pickle.loads(pickle.dumps(mm))
    assert copy == mm and copy.pid == os.getpid()
    kproc.mmput(mm)
    with pytest.raises(kproc.KthreadError):
        kproc.mmput(mm)
    assert kproc.get_task_mm(os.getpid()) == copy


def test_get_task_mm_takes_a_task_or_a_pid(rt):
    started = kproc.Completion()
    from fns import kthread as kfuncs
    task = kproc.kthread_run(kfuncs.loop_until_stop, started, "mmtask")
    kproc.wait_for_completion(started)
    assert kproc.get_task_mm(task).pid == task.pid
    for bad, exc in (("1", TypeError), (True, TypeError), (0, ValueError)):
        with pytest.raises(exc):
            kproc.get_task_mm(bad)
    kproc.kthread_stop(task)
