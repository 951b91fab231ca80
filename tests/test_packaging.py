"""Packaging (issue 9, SPEC §8): the wheel holds every module and py.typed.

Builds the wheel from this checkout, installs it into a fresh venv, imports
every module of the package there and runs ``kproc ps`` from a folder outside
the checkout, so a module the package discovery misses fails here.
Backend-independent: ``make test`` runs it once, in the futex pass.
"""

import os
import pkgutil
import shutil
import subprocess
import sys
import zipfile

import pytest

import kproc

pytestmark = pytest.mark.timeout(600)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kproc.__file__)))


def _run(*argv, **kw):
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _package_modules():
    names = {"kproc"}
    for info in pkgutil.walk_packages(kproc.__path__, "kproc."):
        names.add(info.name)
    return names


def test_wheel_installs_every_module_and_runs_kproc_ps(tmp_path):
    # Built from a copy of the tracked files: a build/ left in the checkout would
    # put modules that no longer exist into the wheel.
    tracked = _run("git", "ls-files", cwd=ROOT).stdout.split()
    src = tmp_path / "src"
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), src / name)
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(wheels), str(src))
    (wheel,) = list(wheels.glob("kproc-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
    assert "kproc/py.typed" in files
    for name in _package_modules() - {"kproc._native"}:
        path = name.replace(".", "/")
        assert f"{path}.py" in files or f"{path}/__init__.py" in files, name
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    py = str(venv / "bin" / "python")
    _run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import importlib, pkgutil, kproc\n"
            "assert 'site-packages' in kproc.__file__, kproc.__file__\n"
            "names = [m.name for m in pkgutil.walk_packages(kproc.__path__, 'kproc.')]\n"
            "for name in names:\n"
            "    if name != 'kproc.__main__':\n"
            "        importlib.import_module(name)\n"
            "print(len(names))\n")
    out = _run(py, "-c", code, cwd=elsewhere, env=env).stdout
    assert int(out) == len(_package_modules()) - 1     # all but kproc itself
    ps = _run(py, "-m", "kproc", "ps", "--json", cwd=elsewhere, env=env).stdout
    assert ps.strip().startswith("[")
