"""The public surface and the portable fallback."""

import os
import re
import subprocess
import sys

import pytest

import kproc

pytestmark = pytest.mark.timeout(60)

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "SPEC.md")


SPEC_NAMES = os.path.join(os.path.dirname(__file__), "spec_names.txt")


def _spec_api_names(text):
    """Identifiers in backticks in SPEC §2-§3 (task states, flags and the API)."""
    section = text[text.index("## 2. Task states"):text.index("## 4. Semantics")]
    names = set()
    for chunk in re.findall(r"`([^`]*)`", section, re.S):
        names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", chunk))
    return names


def _snapshot_names():
    with open(SPEC_NAMES) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def test_exports_are_spec_names():
    """kproc exports nothing that SPEC §2/§3 does not name (STYLE habit 1).

    Checked against tests/spec_names.txt, a snapshot of SPEC's names kept in the
    repository so the check runs in a clone without SPEC.md beside it.
    """
    named = _snapshot_names()
    extra = sorted(n for n in kproc.__all__ if n not in named)
    assert extra == [], f"exported but not in SPEC: {extra}"
    for name in kproc.__all__:
        assert hasattr(kproc, name)


def test_spec_names_snapshot_matches_spec():
    """The snapshot is SPEC's own list, not an invented one (when SPEC.md is reachable)."""
    if not os.path.exists(SPEC):
        pytest.skip("shared/SPEC.md is not beside this checkout; the snapshot is used")
    with open(SPEC) as f:
        assert _snapshot_names() == _spec_api_names(f.read())


def test_core_works_without_the_c_extension(tmp_path):
    """KPROC_NATIVE=0: lock-based atomics and the posix backend, nothing native."""
    tests = os.path.dirname(__file__)
    code = (
        "import sys, errno; sys.path.insert(0, %r)\n"
        "import kproc\nfrom fns import kthread as kfuncs\n"
        "with kproc.start() as rt:\n"
        "    assert rt.backend == 'posix', rt.backend\n"
        "    assert type(rt.mem).__name__ == 'PyMem'\n"
        "    c = kproc.Completion()\n"
        "    t = kproc.kthread_run(kfuncs.complete_then_return, (c, 6), 'pure')\n"
        "    kproc.wait_for_completion(c)\n"
        "    p = kproc.kthread_create(kfuncs.ret_value, 0, 'p')\n"
        "    assert kproc.kthread_park(p) == 0\n"
        "    assert kproc.kthread_stop(p) == 0   # leaves parkme, runs threadfn\n"
        "    print('ok', kproc.kthread_stop(t))\n") % tests
    env = dict(os.environ, KPROC_NATIVE="0", KPROC_BACKEND="",
               PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50, env=env)
    assert out.stdout.strip() == "ok 6", out.stderr


def test_futex_backend_without_the_extension_warns_once_and_runs_pure_python():
    """Installed without a compiler (here: KPROC_NATIVE=0), the default futex
    backend runs on the pure-Python path: one RuntimeWarning at start(), not one
    per runtime or per process; an explicit backend='posix' is not warned about."""
    code = (
        "import sys, warnings; sys.path.insert(0, %r)\n"
        "import kproc\nfrom fns import kthread as kfuncs\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    with kproc.start() as rt:\n"
        "        assert rt.backend == 'posix', rt.backend\n"
        "        c = kproc.Completion()\n"
        "        t = kproc.kthread_run(kfuncs.complete_then_return, (c, 6), 'pure')\n"
        "        kproc.wait_for_completion(c)\n"
        "        assert kproc.kthread_stop(t) == 6\n"
        "    with kproc.start(backend='posix'):\n"
        "        pass\n"
        "print(len(seen), seen[0].category.__name__, seen[0].filename == '<string>')\n"
        "print(seen[0].message)\n") % os.path.dirname(__file__)
    env = dict(os.environ, KPROC_NATIVE="0", KPROC_BACKEND="futex",
               PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50, env=env)
    assert out.returncode == 0, out.stderr
    count, message = out.stdout.split("\n", 1)
    assert count == "1 RuntimeWarning True"
    assert "KPROC_NATIVE=0" in message and "pure-Python path" in message
    assert out.stderr == ""                   # kthreadd and the kthread said nothing
