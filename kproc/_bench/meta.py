"""What a run ran on: kernel, CPU model and count, kproc version and commit,
backend, spin settings, pinning, date.  Stored in the JSON; the short
``machine`` line titles the plot's panels.
Context: the command-line process.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

import kproc

__all__ = ["CALLER_CPU", "PEER_CPU", "collect", "machine", "checkout"]

CALLER_CPU, PEER_CPU = 0, 1


def checkout() -> str | None:
    """The source tree kproc is imported from when it is a git checkout, else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(kproc.__file__)))
    return root if os.path.exists(os.path.join(root, ".git")) else None


def _version() -> str:
    version = getattr(kproc, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("kproc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _commit(root: str | None) -> str | None:
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(quick: bool) -> dict[str, Any]:
    """The run's metadata.  @quick: the run is ``--quick``.
    Context: the command-line process.  Return: a JSON-ready dict."""
    root = checkout()
    env = os.environ
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(), "machine": platform.machine(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_online": sorted(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "kproc_version": _version(), "kproc_commit": _commit(root),
        "backend": env.get("KPROC_BACKEND", "futex"),
        "spin_us": env.get("KPROC_SPIN_US", "default (50 with more than one online CPU)"),
        "timer_spin_us": env.get("KPROC_TIMER_SPIN_US", "default (100)"),
        "native": env.get("KPROC_NATIVE", "1"),
        "pinning": f"caller CPU {CALLER_CPU}, peer/worker CPU {PEER_CPU}",
        "root": os.geteuid() == 0, "quick": quick,
    }


def machine(meta: dict[str, Any]) -> str:
    """A one-line name of the machine of ``meta``.  Context: any.  Return: it."""
    return (f"{meta.get('cpu_model', '?')}, {meta.get('cpu_count', '?')} CPUs, "
            f"Linux {meta.get('kernel', '?')}, {meta.get('date', '')[:10]}")
