"""Another user (``nobody``) against a runtime of root's: it must not reach the
arena (``/proc/<kthreadd>/fd/<N>``), any kthread's memory (``/proc/<pid>/mem``),
the posix backend's semaphores (``/dev/shm``), or signal any of its processes;
and its ``kproc ps`` must list nothing of root's.  Needs root (to be nobody)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap

import kproc

from . import fns
from .harness import Result

PROBE = textwrap.dedent("""
    import json, os, signal, sys
    targets = json.loads(sys.argv[1])
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "reached"
        except OSError as exc:
            out[name] = exc.__class__.__name__
    attempt("arena", lambda: os.close(os.open(targets["arena"], os.O_RDONLY | os.O_NONBLOCK)))
    for pid in targets["pids"]:
        attempt(f"mem {pid}", lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY)))
        attempt(f"signal {pid}", lambda: os.kill(pid, 0))
    for name in targets["shm"]:
        attempt(f"shm {name}", lambda: os.close(os.open("/dev/shm/" + name, os.O_RDWR)))
    print(json.dumps(out))
""")


def other_uid(r: Result) -> None:
    if os.geteuid() != 0:
        r.skipped = "needs root to act as nobody"
        return
    nobody = pwd.getpwnam("nobody").pw_uid
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    rt = kproc.start(backend=r.backend)
    started = kproc.Completion()
    t = kproc.kthread_run(fns.sleeper, started, "uid-target")
    kproc.wait_for_completion(started)
    w = kproc.kthread_create_worker(0, "uid-worker")
    shm = [n for n in os.listdir("/dev/shm")]
    targets = {"arena": f"/proc/{rt.kthreadd_pid}/fd/{rt.arena.fd}",
               "pids": [rt.kthreadd_pid, t.pid, w.task.pid], "shm": shm}
    try:
        probe = subprocess.run([python, "-I", "-c", PROBE, json.dumps(targets)], user=nobody,
                               capture_output=True, text=True, timeout=20)
        results = json.loads(probe.stdout) if probe.returncode == 0 else {}
        if not results:
            r.errors += 1
            r.note(f"the probe failed: {probe.stderr[-200:]!r}")
        for what, outcome in results.items():
            r.trials += 1
            if outcome == "reached":
                r.errors += 1
                r.note(f"nobody reached {what}")
        r.trials += 1
        _ps_as(r, nobody, python, rt.kthreadd_pid)
    finally:
        kproc.kthread_stop(t)
        kproc.kthread_destroy_worker(w)
        kproc.shutdown()


def _ps_as(r: Result, uid: int, python: str, kthreadd: int) -> None:
    """``kproc ps --json`` run as ``uid``: it must work and list nothing of ours."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = dict(os.environ, PYTHONPATH=":".join([root] + site))
    out = subprocess.run([python, "-m", "kproc", "ps", "--json"], user=uid, env=env,
                         capture_output=True, text=True, timeout=20, cwd="/")
    if out.returncode != 0:
        if "No module named" in out.stderr:
            r.note("kproc ps as nobody not run: this interpreter lacks its modules")
            return
        r.errors += 1
        r.note(f"kproc ps as nobody failed: {out.stderr.strip()[-200:]!r}")
        return
    listed = [rt["kthreadd"] for rt in json.loads(out.stdout)]
    if kthreadd in listed:
        r.errors += 1
        r.note("kproc ps as nobody listed root's runtime")
