"""SIGINT storms: Ctrl-C at random points of every blocking call.

A child owner (``sigint_child``) loops over the blocking calls (create, stop,
park, flush, cancel_sync, a completion wait, destroy_worker, shutdown and
start), catching ``KeyboardInterrupt`` around each, while this process sends
it SIGINT at random intervals.  Then the storm stops and the child must run a
sanity workload and exit 0 within 2 s + its work: no lock left held, no
hand-off left half done, no hang in shutdown; and everything it started must
be gone.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid

from .harness import HANG_S, Result
from .kills import _trial_processes


def sigint_storm(r: Result, trials: int, seconds: float) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(trials):
        trial = uuid.uuid4().hex
        env = dict(os.environ, CHAOS_TRIAL=trial)
        child = subprocess.Popen([sys.executable, "-m", "chaos.sigint_child", r.backend],
                                 env=env, cwd=root, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        r.trials += 1
        line = child.stdout.readline()      # type: ignore[union-attr]
        if line != "ready\n":
            r.errors += 1
            r.note(f"the child did not start: {line!r} {child.stderr.read()[-300:]!r}")  # type: ignore[union-attr]
            child.kill()
            child.wait()
            continue
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end and child.poll() is None:
            time.sleep(random.uniform(0.0002, 0.01))
            try:
                child.send_signal(signal.SIGINT)
                sent += 1
            except ProcessLookupError:
                break
        t_end = time.monotonic()
        try:
            out, err = child.communicate("done\n", timeout=HANG_S + 8)
        except subprocess.TimeoutExpired:
            r.hangs += 1
            r.note(f"the child hung after a storm of {sent} SIGINTs")
            child.kill()
            out, err = child.communicate()
        else:
            r.recovery.append(time.monotonic() - t_end)
            if child.returncode != 0 or "sane" not in out:
                r.errors += 1
                r.note(f"exit {child.returncode} after {sent} SIGINTs: {err.strip()[-200:]!r}")
        r.extra["sigints"] = r.extra.get("sigints", 0) + sent
        deadline = time.monotonic() + HANG_S
        while (left := _trial_processes(trial)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if left:
            r.orphans += len(left)
            r.note(f"{len(left)} processes outlived the child: "
                   f"{[(p.pid, p.name()) for p in left][:4]}")
            for p in left:
                p.kill()
