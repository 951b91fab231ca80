"""The pool's own error: ``BrokenKthreadPool``, a ``concurrent.futures.BrokenExecutor``.

SPEC §3 names no class for it, so ``kproc`` does not export it; it is
reachable as ``kproc._pool.executor.BrokenKthreadPool`` (and catching
``concurrent.futures.BrokenExecutor`` catches it), as
``concurrent.futures.process.BrokenProcessPool`` is for ProcessPoolExecutor.
"""

from concurrent.futures import BrokenExecutor

__all__ = ["BrokenKthreadPool"]


class BrokenKthreadPool(BrokenExecutor):
    """A worker of the pool died or its initializer failed: the pool is not usable anymore.

    Every call not yet finished fails with it, and so does every later submit.
    """
