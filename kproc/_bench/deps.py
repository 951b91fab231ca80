"""The optional packages of the ``bench`` extra, looked for only when a
benchmark runs: kproc itself never needs them at import.

Context: the command-line process.
"""

from __future__ import annotations

import importlib.util

__all__ = ["INSTALL", "missing"]

INSTALL = "pip install 'kproc[bench]'"

# module to import: the package that provides it
_PACKAGES = {"hdrh": "hdrhistogram", "tqdm": "tqdm", "matplotlib": "matplotlib"}


def missing(png: bool = False) -> list[str]:
    """The packages of the bench extra that cannot be imported here.

    @png: also require matplotlib (for ``--png``).
    Context: any.
    Return: their package names (empty when everything is installed).
    """
    wanted = ["hdrh", "tqdm"] + (["matplotlib"] if png else [])
    return [_PACKAGES[m] for m in wanted if importlib.util.find_spec(m) is None]
