"""Errors and warnings of kproc, and the one "can't happen" helper.

The kernel's ``ERR_PTR`` returns become :class:`KthreadError`, an ``OSError``
carrying the errno; ``WARN_ON`` becomes a :class:`KernelWarning`.  Internal
invariants that must never break go through :func:`warn_on_once`, which raises
instead of warning when ``KPROC_STRICT=1`` (the test suite sets it), so a
broken invariant fails a test instead of scrolling by.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import warnings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["KthreadError", "KernelWarning", "warn_on_once", "kernel_warn",
           "kernel_warnings_dropped"]


class KthreadError(OSError):
    """An error the kernel would return as an ERR_PTR or a negative errno.

    ``.errno`` holds the positive errno (``errno.ENOMEM``, ``errno.ESRCH``...).
    """

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


class KernelWarning(UserWarning):
    """What the kernel reports with WARN_ON: misuse that kproc refused or survived."""


_warned_once: set[str] = set()


_dropping = threading.local()


@contextlib.contextmanager
def kernel_warnings_dropped() -> Iterator[None]:
    """Drop the kernel_warn() warnings of the calling thread only, while inside.

    The thread-safe stand-in for ``warnings.catch_warnings()`` + ``simplefilter
    ("ignore", KernelWarning)``, which swaps the process-wide filters (other
    threads lose their warnings meanwhile, and their filter changes at its exit).
    Context: any thread.
    """
    depth = getattr(_dropping, "depth", 0)
    _dropping.depth = depth + 1
    try:
        yield
    finally:
        _dropping.depth = depth


def kernel_warn(message: str, stacklevel: int = 3) -> None:
    """Report API misuse the way WARN_ON does: a :class:`KernelWarning`."""
    if getattr(_dropping, "depth", 0):
        return                    # inside kernel_warnings_dropped() in this thread
    warnings.warn(message, KernelWarning, stacklevel=stacklevel)


def warn_on_once(condition: object, message: str) -> bool:
    """WARN_ON_ONCE for kproc's own invariants ("can't happen").

    Return: whether ``condition`` held, so it can be used as ``if warn_on_once(x, ...)``.
    Raises: ``AssertionError`` when ``KPROC_STRICT=1`` and the condition holds.
    """
    if not condition:
        return False
    if os.environ.get("KPROC_STRICT") == "1":
        raise AssertionError("kproc invariant broken: " + message)
    if message not in _warned_once:
        _warned_once.add(message)
        warnings.warn("kproc invariant broken: " + message, KernelWarning, stacklevel=3)
    return True


def stale(what: str, how: str = "its slot was freed or recycled") -> KthreadError:
    """The error raised for a handle whose slot was recycled or freed (``how``: which)."""
    return KthreadError(errno.ESRCH, f"stale {what} handle: the object it named is gone "
                        f"({how}); nothing was touched")
