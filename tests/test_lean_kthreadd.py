"""A lean kthreadd (issue #12): kthreadd, and so every kthread forked from it, loads
the kthread API and what kthreads commonly run, not the rest of kproc or the heavy
parts of the standard library.

Each page kthreadd maps is a page-table entry each fork copies (``copy_page_range``)
and each kthread's exit tears down (``unmap_page_range``): docs/design.md, "A lean
kthreadd".  The caller here imports every module that is kept out, so a kthread that
lacks them got its modules from kthreadd alone.
"""

import ast
import importlib
import os
import subprocess
import sys

import pytest

import kproc
from fns import modules as fns_modules
from kproc._core.native import has
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)

# Loaded by the caller, kept out of kthreadd: CPU hotplug, the pool's caller side, and the
# stdlib modules they (or kproc's caller-side code: start(), tracing, a __main__ check) need.
KEPT_OUT = (
    "kproc._hotplug.api", "kproc._hotplug.smpboot", "kproc._hotplug.machine",
    "kproc._pool.executor", "kproc._pool.engine", "kproc._pool.future",
    "ctypes", "ctypes.util", "subprocess", "multiprocessing", "multiprocessing.spawn",
    "tempfile", "shutil", "json", "secrets", "hashlib", "random", "datetime", "ast",
    "traceback", "concurrent.futures", "logging", "typing", "socket", "bz2", "lzma",
)
# What kthreads commonly run (a pool's workers: the pool's works, ``remote``): preloaded in
# kthreadd, so no kthread imports it itself.
PRELOADED = (
    "kproc._kthread.body", "kproc._kthread.control", "kproc._kthread.affinity",
    "kproc._sched.completion", "kproc._sched.schedule", "kproc._freezer",
    "kproc._workqueue.worker", "kproc._workqueue.loop", "kproc._hotplug.cpumask",
    "kproc._pool.remote", "pickle",
)


def _kthread_modules(path):
    task = kproc.kthread_run(fns_modules.write_modules, str(path), "lean")
    wait_until(lambda: os.path.exists(path), 10.0, message="the kthread wrote nothing")
    assert kproc.kthread_stop(task) == 0
    return set(path.read_text().split("\n"))


@pytest.mark.parametrize("spares", ["4", "0"])
def test_kthreadd_loads_only_what_kthreads_need(tmp_path, monkeypatch, spares):
    """A kthread (a claimed spare, or with KPROC_SPARES=0 a fork for the create list)
    has none of the modules kept out, though its caller has them all, and has every
    module kthreads commonly run."""
    for name in KEPT_OUT:           # the caller's own imports, not kthreadd's
        importlib.import_module(name)
    kproc.cpu_up                    # a lazy name, resolved in the caller
    monkeypatch.setenv("KPROC_SPARES", spares)
    with kproc.start():
        mods = _kthread_modules(tmp_path / "mods")
    assert "fns.modules" in mods    # the threadfn's module: the file is the kthread's
    # Without the C extension (KPROC_NATIVE=0) prctl goes through ctypes, in kthreadd too.
    pure = {"ctypes"} if not has("set_comm") else set()
    assert sorted(m for m in KEPT_OUT if m in mods and m not in pure) == []
    assert sorted(m for m in PRELOADED if m not in mods) == []


def test_a_pool_worker_lacks_the_pool_caller_side(tmp_path, rt):
    """A call run by a KthreadPoolExecutor's worker (a kthread worker running the pool's
    works) finds the pool's worker side preloaded and none of the modules kept out."""
    path = tmp_path / "mods"
    with kproc.KthreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(fns_modules.write_modules, str(path)).result(timeout=20) == 0
    mods = set(path.read_text().split("\n"))
    pure = {"ctypes"} if not has("set_comm") else set()
    assert sorted(m for m in KEPT_OUT if m in mods and m not in pure) == []
    assert "kproc._pool.remote" in mods


def test_a_kthread_imports_nothing_for_the_common_api(tmp_path, rt):
    """A kthread that calls the common API (current, should_stop/park, completions,
    schedule_timeout, msleep, try_to_freeze, cpu_online_mask) imports no module after
    its fork: each import there would be pages that kthread alone holds."""
    path = tmp_path / "new"
    task = kproc.kthread_run(fns_modules.api_imports, str(path), "lean-api")
    wait_until(lambda: os.path.exists(path), 10.0, message="the kthread wrote nothing")
    assert kproc.kthread_stop(task) == 0
    assert path.read_text() == ""


def _fresh_python(code):
    """Run ``code`` in a fresh interpreter that finds this kproc.  Return: its lines."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


def test_import_kproc_loads_no_hotplug_pool_or_heavy_stdlib():
    """``import kproc`` in a fresh interpreter leaves the lazy subsystems and the
    heavy stdlib modules unloaded; the first use of a lazy name loads its module."""
    code = ("import sys, kproc\n"
            f"print(sorted(m for m in {KEPT_OUT!r} if m in sys.modules))\n"
            "kproc.KthreadPoolExecutor\n"
            "print('kproc._pool.executor' in sys.modules, 'KthreadPoolExecutor' in vars(kproc))\n")
    assert _fresh_python(code)[:2] == ["[]", "True True"]


def test_every_public_name_resolves_in_a_fresh_interpreter():
    """``from kproc import NAME`` and ``kproc.NAME`` give every name of ``__all__``,
    each the object its module defines, and ``dir(kproc)`` lists them all."""
    code = ("import kproc\n"
            "names = list(kproc.__all__)\n"
            "missing = [n for n in names if n not in dir(kproc)]\n"
            "ns = {}\n"
            "exec('from kproc import ' + ', '.join(names), ns)\n"
            "same = all(ns[n] is getattr(kproc, n) for n in names)\n"
            "from kproc._hotplug.api import cpu_up\n"
            "print(missing, same, kproc.cpu_up is cpu_up)\n"
            "try:\n"
            "    kproc.no_such_name\n"
            "except AttributeError as e:\n"
            "    print(e)\n")
    assert _fresh_python(code)[:2] == [
        "[] True True", "module 'kproc' has no attribute 'no_such_name'"]


def test_lazy_table_matches_the_typing_imports():
    """The names ``__getattr__`` resolves are the names the TYPE_CHECKING block imports
    (what mypy and readers see), module for module, and all of them are public."""
    with open(kproc.__file__) as f:
        tree = ast.parse(f.read())
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING")
    typed = {"." * n.level + (n.module or ""): tuple(a.name for a in n.names)
             for n in block.body if isinstance(n, ast.ImportFrom)}
    assert typed == kproc._LAZY
    assert all(name in kproc.__all__ for names in typed.values() for name in names)
