"""Build the C extension kproc._native (project metadata lives in pyproject.toml).

The extension is optional: where it cannot be compiled (no C compiler, no
Python headers, ``CC=/bin/false``), the build says so and the package is
installed without it; kproc then runs on its pure-Python path (lock-based
atomics and POSIX semaphores) and ``kproc.start()`` warns once.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if not sys.platform.startswith("linux"):
    sys.exit("kproc runs on Linux only (futexes, memfd, /proc, sysfs); "
             f"this is {sys.platform}")


class optional_build_ext(build_ext):
    """build_ext that turns a failed compile of kproc._native into a notice."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:       # CompileError, LinkError, a missing compiler
            self._skip(exc)

    def _skip(self, exc):
        sys.stderr.write(
            "\n*** kproc: the C extension kproc._native could not be built "
            f"({type(exc).__name__}: {exc}).\n"
            "*** kproc is installed without it and runs on its pure-Python path "
            "(slower waits); install a C compiler and the Python headers, then "
            "reinstall, for the futex fast path.\n\n")


setup(
    cmdclass={"build_ext": optional_build_ext},
    ext_modules=[
        Extension(
            "kproc._native",
            sources=[f"native/{name}.c" for name in
                     ("module", "mem", "args", "futex", "mutex", "layout", "worklist",
                      "wl_methods", "swait", "vm", "pool", "fork")],
            depends=["setup.py", "native/kproc_native.h"],
            # Hidden: the files call each other directly, not through the PLT
            # (PyMODINIT_FUNC keeps PyInit__native visible).
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
            libraries=["pthread"],
            optional=True,
        )
    ],
)
