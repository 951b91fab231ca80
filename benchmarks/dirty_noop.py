"""The threadfn ``benchmarks/dirty.py`` follows, in a module that imports nothing: kthreadd
imports a threadfn's module, and the profiler's own imports (tempfile, threading...)
would otherwise load into kthreadd and every child it forks."""


def noop(_):
    """threadfn: return at once."""
    return 0
