"""The README's code runs as written (SPEC §8): each ```python block is saved
as a script file, exactly as a user would copy it, and run with a timeout from
a folder outside the checkout; it must exit 0, print no traceback or warning,
and leave no process or /dev/shm entry behind."""

import os
import re
import subprocess
import sys

import psutil
import pytest

import kproc
from helpers import assert_no_shm_left

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    with open(README) as f:
        text = f.read()
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def run_script(path, cwd, timeout=60, args=()):
    """Run ``path`` as ``python path`` would; return (stdout, stderr).  Fails on a
    non-zero exit, on stderr output, and on anything of its runtimes left behind."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    env.pop("KPROC_STRICT", None)               # a user's environment
    proc = subprocess.Popen([sys.executable, str(path), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{path} exited {proc.returncode}:\n{out}\n{err}"
    assert err == "", f"{path} wrote to stderr:\n{err}"
    left = [p for p in psutil.process_iter(["name", "ppid"])
            if p.info["ppid"] == proc.pid and p.info["name"] == "kthreadd"]
    assert left == [], f"{path} left kthreadd behind: {left}"
    assert_no_shm_left({proc.pid})
    return out, err


def test_the_readme_has_the_examples_it_promises():
    blocks = _blocks()
    assert len(blocks) >= 3
    for line, code in blocks:
        assert 'if __name__ == "__main__":' in code, f"README.md:{line} has no main guard"


@pytest.mark.parametrize("line,code", [pytest.param(line, code, id=f"README.md:{line}")
                                       for line, code in _blocks()])
def test_readme_block_runs_as_written(line, code, tmp_path):
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code)
    out, _ = run_script(script, cwd=tmp_path)
    assert out.strip(), f"README.md:{line} printed nothing"
