"""Packaging (SPEC §8): the wheel holds every module and py.typed, installs
anywhere, and kproc installs and runs without a C compiler.

Builds the wheel from a copy of this checkout's tracked files, installs it
into a fresh venv, imports every module of the package there and runs
``kproc ps`` and ``kproc --version`` from a folder outside the checkout, so a
module the package discovery misses fails here.  Then installs the source
into another fresh venv with ``CC=/bin/false`` (a compile that fails, as on a
host without gcc): the install must succeed without the extension, and the
futex backend must run on the pure-Python path with one warning.
Backend-independent: ``make test`` runs it once, in the futex pass.
"""

import os
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest

import kproc

pytestmark = pytest.mark.timeout(600)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kproc.__file__)))
PIP = ("-m", "pip", "--disable-pip-version-check")


def _run(*argv, **kw):
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _package_modules():
    names = {"kproc"}
    for info in pkgutil.walk_packages(kproc.__path__, "kproc."):
        names.add(info.name)
    return names


@pytest.fixture
def src(tmp_path):
    """A fresh copy of the tracked files for each test: a build/ left in the
    checkout (or by the other test) would put modules that no longer exist, or
    an extension already compiled, into the wheel."""
    tracked = _run("git", "ls-files", cwd=ROOT).stdout.split()
    src = tmp_path / "src"
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), src / name)
    return src


def _venv(path):
    _run(sys.executable, "-m", "venv", str(path))
    return str(path / "bin" / "python")


def _outside(tmp_path):
    """A folder outside the checkout, and an environment that does not point
    back into it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "KPROC_NATIVE", "KPROC_BACKEND")}
    return elsewhere, env


IMPORT_ALL = ("import importlib, pkgutil, kproc\n"
              "assert 'site-packages' in kproc.__file__, kproc.__file__\n"
              "names = [m.name for m in pkgutil.walk_packages(kproc.__path__, 'kproc.')]\n"
              "for name in names:\n"
              "    if name != 'kproc.__main__':\n"
              "        importlib.import_module(name)\n"
              "print(len(names))\n")


def test_wheel_holds_every_module_metadata_and_installs_anywhere(src, tmp_path):
    wheels = tmp_path / "wheels"
    _run(sys.executable, *PIP, "wheel", "--no-deps", "-q", "-w", str(wheels), str(src))
    (wheel,) = list(wheels.glob("kproc-*.whl"))
    assert wheel.name.startswith(f"kproc-{kproc.__version__}-")
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
        info = f"kproc-{kproc.__version__}.dist-info"
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    assert "kproc/py.typed" in files
    assert any(f.startswith("kproc/_native") and f.endswith(".so") for f in files)
    assert f"{info}/licenses/LICENSE" in files
    for name in _package_modules() - {"kproc._native"}:
        path = name.replace(".", "/")
        assert f"{path}.py" in files or f"{path}/__init__.py" in files, name
    assert meta["Version"] == kproc.__version__
    assert meta["License-Expression"] == "MIT" and meta["Author"] == "kproc developers"
    assert meta["Description-Content-Type"] == "text/markdown" and meta["Keywords"]
    assert meta.get_all("Project-URL") and "Typing :: Typed" in meta.get_all("Classifier")

    py = _venv(tmp_path / "venv")
    _run(py, *PIP, "install", "-q", str(wheel))
    elsewhere, env = _outside(tmp_path)
    out = _run(py, "-c", IMPORT_ALL, cwd=elsewhere, env=env).stdout
    assert int(out) == len(_package_modules()) - 1     # all but kproc itself
    ps = _run(py, "-m", "kproc", "ps", "--json", cwd=elsewhere, env=env).stdout
    assert ps.strip().startswith("[")
    kproc_script = str(tmp_path / "venv" / "bin" / "kproc")
    version = _run(kproc_script, "--version", cwd=elsewhere, env=env).stdout
    assert version.strip() == f"kproc {kproc.__version__} (C extension built)"


RUN_PURE = """
import warnings, kproc
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    with kproc.start() as rt:
        c = kproc.Completion()
        t = kproc.kthread_run(kproc.complete, c, "pure")
        kproc.wait_for_completion(c)
        kproc.kthread_stop(t)
        print(rt.backend, type(rt.mem).__name__, len(seen), seen[0].category.__name__)
"""


def test_installs_and_runs_without_a_c_compiler(src, tmp_path):
    """``CC=/bin/false pip install .``: the compile fails, the install does not;
    the futex backend runs on the pure-Python path with one RuntimeWarning."""
    py = _venv(tmp_path / "venv")
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false")
    done = _run(py, *PIP, "install", "-v", str(src), env=env)
    assert "kproc._native could not be built" in done.stdout + done.stderr
    elsewhere, env = _outside(tmp_path)
    out = _run(py, "-c", IMPORT_ALL, cwd=elsewhere, env=env).stdout
    assert int(out) == len(_package_modules() - {"kproc", "kproc._native"})
    assert _run(py, "-c", "import kproc._core.native as n; print(n.native)",
                cwd=elsewhere, env=env).stdout.strip() == "None"
    out = _run(py, "-c", RUN_PURE, cwd=elsewhere, env=env)
    assert out.stdout.split() == ["posix", "PyMem", "1", "RuntimeWarning"], out.stderr
    version = _run(py, "-m", "kproc", "--version", cwd=elsewhere, env=env).stdout
    assert version.strip() == (f"kproc {kproc.__version__} "
                               "(C extension not built: pure-Python path)")
