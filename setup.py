"""Build the C extension kproc._native (metadata lives in pyproject.toml)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kproc._native",
            sources=["native/kproc_native.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-std=gnu11"],
            libraries=["pthread"],
        )
    ],
)
