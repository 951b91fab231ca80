"""threadfns for ``benchmarks/dirty.py`` and ``benchmarks/kthreadd_mem.py``, in a module
that imports nothing but ``os`` and ``sys``: kthreadd imports a threadfn's module, and the
profilers' own imports (tempfile, threading...) would otherwise load into kthreadd and
every child it forks."""

import os
import sys


def noop(_):
    """threadfn: return at once."""
    return 0


def write_modules(path):
    """threadfn: write the kthread's module names (kthreadd's, and this one) to ``path``."""
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(sorted(sys.modules)))
    os.replace(path + ".tmp", path)
    return 0
