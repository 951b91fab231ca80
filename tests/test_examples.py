"""Every program in examples/ (the worked examples of the API reference too)
runs (SPEC §8), as a user runs it: ``python examples/NAME.py`` from a folder
outside the checkout, with a timeout, no output on stderr, nothing left
behind; and prints what its docstring says."""

import os

import pytest

from test_readme import ROOT, run_script

pytestmark = pytest.mark.timeout(120)

EXAMPLES = os.path.join(ROOT, "examples")


def _run(name, tmp_path, *args):
    out, _ = run_script(os.path.join(EXAMPLES, name), cwd=tmp_path, args=args)
    return out.splitlines()


def test_every_example_is_tested():
    tested = {name.removeprefix("test_") + ".py" for name in globals()
              if name.startswith("test_") and name != "test_every_example_is_tested"}
    assert tested == {n for n in os.listdir(EXAMPLES) if n.endswith(".py")}


def test_pinned_workers(tmp_path):
    lines = _run("pinned_workers.py", tmp_path)
    assert lines[-1] == "17984 primes below 200000"
    bound = [line for line in lines if line.startswith("primes/")]
    assert len(bound) == len(os.sched_getaffinity(0)) or len(bound) >= 1
    for line in bound:
        cpu = line.split("/")[1].split(":")[0]
        assert line.endswith(f"runs on CPUs {{{cpu}}}"), line


def test_work_queue(tmp_path):
    lines = [line.strip() for line in _run("work_queue.py", tmp_path)]
    # The worker prints from its own process, so its lines and the caller's may
    # reach the pipe in either order: look for the caller's line, not its place.
    assert "cancelled before its timer: True" in lines
    ran = [line.split(" ran in")[0].strip() for line in lines if " ran in the worker" in line]
    assert ran == ["queued at once", "delayed 0.2 s", "delayed 5 s, moved to 0.4 s"]
    assert "nothing left to cancel: False" in lines and lines[-1] == "works executed: 3"


def test_completion_pingpong(tmp_path):
    lines = _run("completion_pingpong.py", tmp_path, "200")
    assert lines[0].startswith("200 round trips with pong/") and "median" in lines[0]
    assert lines[1] == "pong returned 0"


def test_park_unpark(tmp_path):
    lines = _run("park_unpark.py", tmp_path)
    assert "kthread_park() returned 0" in lines
    assert "parked:  TASK_PARKED" in lines
    assert lines[-1] == "kthread_stop() returned 0"


def test_hotplug_fake(tmp_path):
    lines = [line.strip() for line in _run("hotplug_fake.py", tmp_path)]
    assert lines[0] == "online: [0, 1, 2, 3] threads: ['demo/0', 'demo/1', 'demo/2', 'demo/3']"
    assert "demo/1: parking, CPU 1 is going down" in lines
    assert "online: [0, 2, 3]" in lines and "demo/1 is TASK_PARKED" in lines
    assert "demo/1 runs on CPUs {1}" in lines          # kthreads print from their own processes


def test_runtime_basics(tmp_path):
    lines = _run("runtime_basics.py", tmp_path)
    assert lines[0].startswith("kthreadd pid ") and lines[0].endswith(" backend")
    assert lines[1:] == ["a second start(): EBUSY", lines[2],
                         "kthread_bind() after the first wake: KernelWarning",
                         "kthread_stop() returned 7",
                         "shut down: kthreadd and its kthreads are gone"]
    assert lines[2].startswith("idle/1 (pid ") and lines[2].endswith(") runs")


def test_freezer(tmp_path):
    lines = _run("freezer.py", tmp_path)
    assert lines == ["frozen: TASK_FROZEN",
                     "freezable ticks: False   the other ticks: True",
                     "thawed, freezable ticks: True", "stopped: 0 0"]
