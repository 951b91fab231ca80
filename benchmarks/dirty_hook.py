"""Checkpoints for ``benchmarks/dirty.py``: imported by kthreadd (``preload``), it wraps
the steps a child of kthreadd runs so that the child stops itself (SIGSTOP) before and
after each, having written ``PID TAG`` to ``$KPROC_DIRTY_TAGS``.  The profiler reads the
stopped child's smaps and continues it.  Never imported by kproc itself.
"""

import os
import signal

from kproc._kthread import body, fork, kthreadd

_FD = os.open(os.environ["KPROC_DIRTY_TAGS"], os.O_WRONLY | os.O_APPEND)
_PID = os.getpid()


def cp(tag):
    """Stop here (a child of kthreadd only), once the tag is written."""
    pid = os.getpid()
    if pid == _PID:
        return
    os.write(_FD, b"%d %s\n" % (pid, tag))
    os.kill(pid, signal.SIGSTOP)


def _wrap(owner, name, before, after):
    orig = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            cp(before)
        out = orig(*args, **kwargs)
        if after:
            cp(after)
        return out

    setattr(owner, name, wrapper)


_orig_after_fork = fork._after_bare_fork


def _after_fork():
    cp(b"0-forked")
    cp(b"1-hook-cost")
    _orig_after_fork()
    cp(b"2-after_fork")


fork._after_bare_fork = _after_fork
_wrap(kthreadd, "spare_wait", b"3-spare-comm", None)
_wrap(fork, "settle", b"4-spare-claimed", b"5-settled")
_wrap(body, "read_blob", b"5-main-start", b"6-read_blob")
_wrap(body, "prepare_main", None, None)
_wrap(body, "_publish", b"7-loaded", b"9-first-wake")
_wrap(body, "kthread_affine_node", None, b"a-affine_node")
_wrap(body, "parkme", None, b"c-unparked")
