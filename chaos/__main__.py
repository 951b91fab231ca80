"""``python -m chaos [--quick] [--backend futex|posix] [--only NAME ...]``: run the
chaos suite; see the package docstring.  Each experiment and backend runs in a
child process of its own (``--one``), so a hang in one cannot stop the others:
a child that does not finish in its time counts as a hang."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from typing import Any

from .harness import TOKEN_VAR, Accounting, Result, _shm, token_processes

# Counts: the full run (make chaos) and the reduced one (make test).
FULL: dict[str, dict[str, Any]] = {
    "kill-storm": {"trials": 1000}, "lock-holder-death": {"kills": 400},
    "load": {"seconds": 60.0}, "fuzz": {"examples": 2000},
    "sigint-storm": {"trials": 12, "seconds": 3.0}, "other-uid": {}}
QUICK: dict[str, dict[str, Any]] = {
    "kill-storm": {"trials": 45}, "lock-holder-death": {"kills": 20},
    "load": {"seconds": 3.0}, "fuzz": {"examples": 150},
    "sigint-storm": {"trials": 2, "seconds": 1.5}, "other-uid": {}}
TIME_LIMIT = {"full": 420.0, "quick": 60.0}     # seconds per experiment and backend


def run_one(name: str, backend: str, counts: dict[str, Any]) -> Result:
    """In the child: one experiment on one backend, accounted."""
    from . import fuzz, kills, load, sigint, uid    # the experiment's module only here
    r = Result(name, backend)
    fn = {"kill-storm": kills.kill_storm, "lock-holder-death": kills.lock_holder_death,
          "load": load.load, "fuzz": fuzz.fuzz, "sigint-storm": sigint.sigint_storm,
          "other-uid": uid.other_uid}[name]
    with Accounting(r):
        try:
            fn(r, **counts)
        except Exception as exc:       # the experiment itself broke: a failure, reported
            r.errors += 1
            r.note(f"the experiment raised {type(exc).__name__}: {exc}")
    return r


def _spawn(name: str, backend: str, mode: str) -> Result:
    """In the parent: run one experiment in a child, then count what it left."""
    shm0 = _shm()
    cmd = [sys.executable, "-m", "chaos", "--one", name, "--backend", backend]
    if mode == "quick":
        cmd.append("--quick")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = child.communicate(timeout=TIME_LIMIT[mode])
        last = out.strip().splitlines()[-1] if out.strip() else "{}"
        r = Result(**json.loads(last)) if last.startswith("{") else Result(name, backend)
        if child.returncode != 0 and not r.notes:
            r.errors += 1
            r.note(f"the experiment's process ended with status {child.returncode}")
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        r = Result(name, backend, hangs=1)
        r.note(f"did not finish within {TIME_LIMIT[mode]:.0f} s")
    r.seconds = time.monotonic() - t0
    left = token_processes()
    for p in left:
        r.orphans += 1
        r.note(f"left after the experiment: pid {p.pid} {p.name()!r}")
        p.kill()
    for entry in _shm() - shm0:
        r.shm += 1
        r.note(f"/dev/shm entry left after the experiment: {entry}")
        try:
            os.unlink(os.path.join("/dev/shm", entry))
        except OSError:
            pass
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the reduced counts (make test)")
    ap.add_argument("--backend", choices=["futex", "posix"], action="append",
                    help="a wait backend (default: both)")
    ap.add_argument("--only", action="append", choices=list(FULL),
                    help="run only this experiment (repeatable)")
    ap.add_argument("--one", choices=list(FULL), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    counts = QUICK if args.quick else FULL
    os.environ.setdefault(TOKEN_VAR, uuid.uuid4().hex)
    if args.one:
        r = run_one(args.one, args.backend[0], counts[args.one])
        print(json.dumps(asdict(r)), flush=True)
        return 0
    passed = failed = 0
    for backend in args.backend or ["futex", "posix"]:
        for name in args.only or list(FULL):
            r = _spawn(name, backend, mode)
            print(r.line(), flush=True)
            if r.skipped or r.passed:
                passed += 1
            else:
                failed += 1
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
