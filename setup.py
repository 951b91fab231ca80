"""Build the C extension kproc._native (project metadata lives in pyproject.toml)."""

import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    sys.exit("kproc runs on Linux only (futexes, memfd, /proc, sysfs); "
             f"this is {sys.platform}")

setup(
    ext_modules=[
        Extension(
            "kproc._native",
            sources=[f"native/{name}.c" for name in
                     ("module", "mem", "args", "futex", "mutex", "layout", "worklist",
                      "wl_methods", "swait", "vm")],
            depends=["setup.py", "native/kproc_native.h"],
            # Hidden: the files call each other directly, not through the PLT
            # (PyMODINIT_FUNC keeps PyInit__native visible).
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
            libraries=["pthread"],
        )
    ],
)
