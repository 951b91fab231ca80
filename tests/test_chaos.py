"""The chaos suite's reduced form (issue #11; ``make chaos`` runs the full one).

Runs ``python -m chaos --quick`` on this run's backend (KPROC_BACKEND): the
kill storm (45 trials, 5 per scenario), lock-holder death (20 kills), 3 s of
load, 150 fuzzed calls, 2 SIGINT storms and another uid (as root), about
20 s.  Each experiment must report 0 hangs, orphans, leaks and lost or
duplicated works, and every fuzzed call a clear exception (SPEC §5).
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_reduced_chaos_suite_passes():
    backend = os.environ.get("KPROC_BACKEND") or "futex"
    out = subprocess.run([sys.executable, "-m", "chaos", "--quick", "--backend", backend],
                         cwd=ROOT, capture_output=True, text=True, timeout=220)
    print(out.stdout)
    lines = out.stdout.strip().splitlines()
    assert lines and lines[-1].endswith(" 0 failed"), out.stdout + out.stderr[-2000:]
    assert out.returncode == 0
