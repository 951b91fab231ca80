"""A ``__main__`` that kthreads cannot import is refused clearly (SPEC §5).

As multiprocessing's spawn does (its "bootstrapping phase" RuntimeError, and
the AttributeError for ``__main__`` without a file), kproc imports the caller's
main script in kthreadd to find functions defined there; code on stdin or in
``python -c`` has no file, and a script without ``if __name__ == "__main__":``
would run its kproc calls again.  Each small script runs in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

BODY = textwrap.dedent('''\
    import kproc

    def fn(started):
        kproc.complete(started)
        return 5
    ''')
RUN = textwrap.dedent('''\
    with kproc.start():
        started = kproc.Completion()
        t = kproc.kthread_run(fn, started, "guarded")
        kproc.wait_for_completion(started)
        print("result", kproc.kthread_stop(t))
    ''')


def _run(args, stdin=None, cwd=None):
    proc = subprocess.run([sys.executable, *args], input=stdin, capture_output=True,
                          text=True, timeout=30, cwd=cwd, env=dict(os.environ))
    return proc.returncode, proc.stdout, proc.stderr


def _refused(rc, err, words):
    assert rc != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: threadfn 'fn' comes from __main__"), err
    for w in words:
        assert w in last, (w, last)
    assert "During handling" not in err and "pickle" not in last.lower(), err


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    script = tmp_path / "noguard.py"
    script.write_text(BODY + RUN)
    rc, out, err = _run([str(script)])
    _refused(rc, err, ['if __name__ == "__main__":', "noguard.py", "no "])
    assert "result" not in out


def test_code_on_stdin_is_told_it_has_no_file(tmp_path):
    rc, out, err = _run(["-"], stdin=BODY + RUN, cwd=tmp_path)
    _refused(rc, err, ["stdin", "python -c", "no file"])


def test_python_dash_c_is_told_it_has_no_file(tmp_path):
    rc, out, err = _run(["-c", BODY + RUN], cwd=tmp_path)
    _refused(rc, err, ["python -c"])


def test_a_guarded_script_runs(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(BODY + 'if __name__ == "__main__":\n' + textwrap.indent(RUN, "    "))
    rc, out, err = _run([str(script)])
    assert rc == 0, err
    assert out.strip() == "result 5"
