"""A work's blob: the pickled ``(func, data)`` and the traceback of its last failed run.

The kernel embeds ``struct kthread_work`` in the user's structure and reaches
the rest with ``container_of``; here the rest travels as a payload in the
work slot's blob, and ``work.data`` is what ``container_of`` would give.

Invariants: the payload (``WORK.payload_len`` bytes at the start of the blob)
only changes through kthread_init_work(), which bumps ``WORK.version`` after
writing it, so a process that read version N and its payload may keep both;
``func`` is pickled by reference (a module-level function); the whole payload
fits in ``WORK_PAYLOAD_MAX`` bytes (checked before anything is written).  The
traceback area after it holds the tail of the last failure, ``WORK.tb_len``
bytes.

Runs in the caller (encoding, writing) and in the worker's kthread (decoding,
storing a traceback); no lock: a payload is written only while no other
process may run the work (a new slot, or under the worker lock while idle).
"""

from __future__ import annotations

import pickle

from .._core import layout as L
from .._core.funcref import pickle_function, prepare_main
from .._core.runtime import Runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    # What a work runs: func(work), called with the work's handle; its result is ignored.
    WorkFunc = Callable[[Any], object]

__all__ = ["pickle_payload", "write_payload", "read_payload", "store_traceback",
           "read_traceback"]

W = L.WORK


def pickle_payload(func: object, data: object) -> bytes:
    """Encode ``(func, data)`` for a work slot.

    Raises: TypeError (func not callable, or not picklable by reference; data
    not picklable), ValueError (more than ``WORK_PAYLOAD_MAX`` bytes).
    """
    func_pickle = pickle_function(func, "func")
    try:
        data_pickle = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"work data must be picklable: {exc}") from exc
    raw = pickle.dumps((func_pickle, data_pickle), protocol=pickle.HIGHEST_PROTOCOL)
    if len(raw) > L.WORK_PAYLOAD_MAX:
        raise ValueError(f"work func and data pickle to {len(raw)} bytes, more than the "
                         f"{L.WORK_PAYLOAD_MAX} a work slot holds; keep large data elsewhere "
                         "(a file, shared memory) and pass a small handle to it")
    return raw


def write_payload(rt: Runtime, idx: int, raw: bytes) -> None:
    """Store an encoded payload in work slot ``idx``'s blob."""
    off = rt.arena.work_blob_off(idx)
    rt.buf[off:off + len(raw)] = raw
    rt.mem.store32(rt.arena.work_off(idx) + W.payload_len, len(raw))


def read_payload(rt: Runtime, idx: int, base: int) -> tuple[WorkFunc, Any]:
    """Decode work slot ``idx``'s ``(func, data)``.

    A function of the caller's ``__main__`` is found by importing that script
    here once, as forkserver does.
    Raises: what unpickling raises.
    """
    n = rt.mem.load32(base + W.payload_len)
    off = rt.arena.work_blob_off(idx)
    func_pickle, data_pickle = pickle.loads(bytes(rt.buf[off:off + n]))
    try:
        return pickle.loads(func_pickle), pickle.loads(data_pickle)
    except (AttributeError, ImportError):
        if b"__main__" not in func_pickle + data_pickle or not prepare_main(rt):
            raise
        return pickle.loads(func_pickle), pickle.loads(data_pickle)


def store_traceback(rt: Runtime, idx: int, text: str) -> None:
    """Keep the tail of the traceback of a work's last failed run in its blob."""
    raw = text.encode("utf-8", "replace")[-L.WORK_TB_MAX:]
    off = rt.arena.work_blob_off(idx) + L.WORK_PAYLOAD_MAX
    rt.buf[off:off + len(raw)] = raw
    rt.mem.store32(rt.arena.work_off(idx) + W.tb_len, len(raw))


def read_traceback(rt: Runtime, idx: int, base: int) -> str | None:
    """The traceback text of the work's last failed run, or None."""
    n = rt.mem.load32(base + W.tb_len)
    if not n:
        return None
    off = rt.arena.work_blob_off(idx) + L.WORK_PAYLOAD_MAX
    return bytes(rt.buf[off:off + n]).decode("utf-8", "replace")
