"""Which parts of the C extension ``kproc._native`` this process can use.

Features are detected (``hasattr``), never inferred, as psutil does: the
extension may be missing (no compiler at install time), older than this
package, or switched off with ``KPROC_NATIVE=0`` (the pure-Python fallback's
tests use that).  Everything else asks here instead of importing the
extension itself.  Runs in every process.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from .._native import Mem  # typing only: the extension may be missing at run time

__all__ = ["native", "has", "load_mem_class"]


def _load() -> ModuleType | None:
    if os.environ.get("KPROC_NATIVE") == "0":
        return None
    try:
        from .. import _native as module    # optional: built only where a compiler was
    except ImportError:
        return None
    return module


native = _load()


def has(name: str) -> bool:
    """True if the extension is usable here and provides ``name``.

    Context: any.  Return: bool.
    """
    return native is not None and hasattr(native, name)


def load_mem_class() -> type[Mem] | None:
    """The extension's shared-memory ``Mem`` type.

    Context: any.  Return: ``kproc._native.Mem``, or None when the extension is
    not built (or ``KPROC_NATIVE=0``): callers then use ``pymem.PyMem``.
    """
    if native is None or not hasattr(native, "Mem"):
        return None
    mem_class: type[Mem] = native.Mem
    return mem_class
