"""A work's blob: the pickled ``(func, data)`` and the exception of its last failed run.

The kernel embeds ``struct kthread_work`` in the user's structure and reaches
the rest with ``container_of``; here the rest travels as a payload in the
work slot's blob, and ``work.data`` is what ``container_of`` would give.

Invariants: the payload (``WORK.payload_len`` bytes at the start of the blob)
only changes through kthread_init_work(), which bumps ``WORK.version`` after
writing it, so a process that read version N and its payload may keep both;
``func`` is pickled by reference (a module-level function); the whole payload
fits in ``WORK_PAYLOAD_MAX`` bytes (checked before anything is written).  The
traceback area after it holds the last failure, ``WORK.tb_len`` bytes: the
exception pickled (at most half the area) and the tail of its traceback text.

Runs in the caller (encoding, writing) and in the worker's kthread (decoding,
storing a traceback); no lock: a payload is written only while no other
process may run the work (a new slot, or under the worker lock while idle).
"""

from __future__ import annotations

import pickle
import struct

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
           "read_traceback", "RemoteTraceback"]

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


class RemoteTraceback(Exception):
    """The ``__cause__`` of a work's kept exception: the traceback text, printed
    with the exception as ``concurrent.futures`` prints a worker's."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_EXC_LEN = struct.Struct("=I")      # length of the pickled exception, then the text
_EXC_MAX = L.WORK_TB_MAX // 2       # the rest holds the traceback's tail


def _exception_pickle(exc: BaseException | None) -> bytes:
    """The exception pickled, or a RuntimeError naming it when it does not
    pickle (or would crowd out the traceback)."""
    try:
        raw = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        if len(raw) <= _EXC_MAX:
            return raw
        why = f"its pickle takes {len(raw)} bytes, more than {_EXC_MAX}"
    except Exception as err:
        why = f"it does not pickle: {err}"
    text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"[:200]
    return pickle.dumps(RuntimeError(f"{text} (kept as RuntimeError: {why})"),
                        protocol=pickle.HIGHEST_PROTOCOL)


def store_traceback(rt: Runtime, idx: int, exc: BaseException | None, text: str) -> None:
    """Keep a work's last failure in its blob: the exception ``exc`` (pickled) and
    the tail of its traceback ``text``.  Runs in the worker's kthread."""
    raw_exc = _exception_pickle(exc)
    room = L.WORK_TB_MAX - _EXC_LEN.size - len(raw_exc)
    raw = _EXC_LEN.pack(len(raw_exc)) + raw_exc + text.encode("utf-8", "replace")[-room:]
    off = rt.arena.work_blob_off(idx) + L.WORK_PAYLOAD_MAX
    rt.buf[off:off + len(raw)] = raw
    rt.mem.store32(rt.arena.work_off(idx) + W.tb_len, len(raw))


def read_traceback(rt: Runtime, idx: int, base: int) -> BaseException | None:
    """The exception of the work's last failed run, or None.

    A new object at each call, as ``concurrent.futures`` rebuilds a worker's:
    the exception raised in the worker, its ``__cause__`` a
    :class:`RemoteTraceback` holding the traceback text (headed with the work's
    function and the worker).  An exception whose class cannot be imported here
    comes back as a RuntimeError naming it.
    """
    n = rt.mem.load32(base + W.tb_len)
    if not n:
        return None
    off = rt.arena.work_blob_off(idx) + L.WORK_PAYLOAD_MAX
    raw = bytes(rt.buf[off:off + n])
    (exc_len,) = _EXC_LEN.unpack_from(raw)
    text = raw[_EXC_LEN.size + exc_len:].decode("utf-8", "replace")
    exc: BaseException
    try:
        exc = pickle.loads(raw[_EXC_LEN.size:_EXC_LEN.size + exc_len])
    except Exception as err:
        last = text.rstrip().rpartition("\n")[2]
        exc = RuntimeError(f"{last} (its class cannot be loaded here: {err})")
    exc.__cause__ = RemoteTraceback(text)
    return exc
