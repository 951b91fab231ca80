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
            sources=["native/module.c"],
            depends=["setup.py"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
            libraries=["pthread"],
        )
    ],
)
