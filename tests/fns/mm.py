"""threadfns for the borrowed-memory, blkcg and sched-class tests."""

import os

import kproc


def copy_across(args):
    """Adopt ``mm``, copy n bytes from src to dst; return bytes not copied
    (or -1000 - len(read) if the read came up short)."""
    mm, src, dst, n = args
    kproc.kthread_use_mm(mm)
    try:
        data = kproc.copy_from_user(src, n)
        if len(data) != n:
            return -1000 - len(data)
        return kproc.copy_to_user(dst, data)
    finally:
        kproc.kthread_unuse_mm(mm)


def read_len(args):
    """Adopt ``mm``; return len(copy_from_user(addr, n))."""
    mm, addr, n = args
    kproc.kthread_use_mm(mm)
    try:
        return len(kproc.copy_from_user(addr, n))
    finally:
        kproc.kthread_unuse_mm(mm)


def write_left(args):
    """Adopt ``mm``; return copy_to_user(addr, b"x" * n) (bytes not copied)."""
    mm, addr, n = args
    kproc.kthread_use_mm(mm)
    try:
        return kproc.copy_to_user(addr, b"x" * n)
    finally:
        kproc.kthread_unuse_mm(mm)


def copy_without_mm(_):
    """Return 1 if copy_from_user and copy_to_user both refuse without an mm."""
    refused = 0
    for call in (lambda: kproc.copy_from_user(0, 1), lambda: kproc.copy_to_user(0, b"x")):
        try:
            call()
        except RuntimeError as exc:
            refused += "kthread_use_mm" in str(exc)
    return 1 if refused == 2 else 0


def blkcg_round_trip(args):
    """Join ``css``, report, wait for ``go``, go back, report, wait for ``leave``
    (so the caller reads this process's /proc/PID/cgroup while it lives)."""
    css, joined, go, back, leave = args
    kproc.kthread_associate_blkcg(css)
    assert kproc.kthread_blkcg() == os.path.realpath(css)
    kproc.complete(joined)
    kproc.wait_for_completion(go)
    kproc.kthread_associate_blkcg(None)
    ok = kproc.kthread_blkcg() is None
    kproc.complete(back)
    kproc.wait_for_completion(leave)
    return 1 if ok else 0


def blkcg_refusal(css):
    """Return the name of the exception kthread_associate_blkcg(css) raises."""
    try:
        kproc.kthread_associate_blkcg(css)
    except Exception as exc:
        return {"ValueError": 1, "TypeError": 2, "OSError": 3, "PermissionError": 4}.get(
            type(exc).__name__, 9)
    return 0


def read_after_go(args):
    """Adopt ``mm``, complete ``ready``, wait for ``go``; return len(copy_from_user)."""
    mm, addr, n, ready, go = args
    kproc.kthread_use_mm(mm)
    kproc.complete(ready)
    kproc.wait_for_completion(go)
    try:
        return len(kproc.copy_from_user(addr, n)) + 100 * kproc.copy_to_user(addr, b"ab")
    finally:
        kproc.kthread_unuse_mm(mm)
