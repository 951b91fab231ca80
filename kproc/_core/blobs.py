"""The task blob: a kthread's full name, its pickled threadfn and data, its traceback.

Each task slot owns one blob of ``layout.BLOB_SIZE`` bytes, laid out by
``layout.TASK_BLOB``: the name (``TASK.name_len`` bytes) at its start, the
payload (a ``TASK_BLOB.fn_len`` header, the threadfn pickle, the data pickle;
``TASK.payload_len`` bytes in all) after ``NAME_MAX``, and the tail of the
last traceback (``TASK.tb_len`` bytes) in its last ``TB_MAX`` bytes.

Written by the creator (name, payload) and by the kthread or kthreadd
(traceback) while the slot is theirs; read by anyone holding a live handle.
Runs in every process of the runtime.
"""

from __future__ import annotations

from . import layout as L
from .arena import Arena

__all__ = ["write_blob", "read_blob", "read_name", "store_traceback", "read_traceback"]

T = L.TASK
B = L.TASK_BLOB


def write_blob(arena: Arena, idx: int, base: int, name_bytes: bytes, fn_pickle: bytes,
               data_pickle: bytes) -> None:
    """Store a kthread's name and payload in slot ``idx``'s blob.

    Context: the creator, while the slot is CREATING.  Return: None.
    """
    blob = arena.blob_off(idx)
    buf = arena.buf
    buf[blob + B.fullname:blob + B.fullname + len(name_bytes)] = name_bytes
    p = blob + B.payload
    L.FN_LEN.pack_into(buf, p, len(fn_pickle))
    p += L.FN_LEN.size
    buf[p:p + len(fn_pickle)] = fn_pickle
    p += len(fn_pickle)
    buf[p:p + len(data_pickle)] = data_pickle
    L.pack_field(buf, base, T, "name_len", len(name_bytes))
    L.pack_field(buf, base, T, "payload_len", L.FN_LEN.size + len(fn_pickle) + len(data_pickle))


def read_blob(arena: Arena, idx: int, base: int) -> tuple[str, bytes, bytes]:
    """Read back what :func:`write_blob` stored.

    Context: any.  Return: (name, threadfn pickle, data pickle).
    """
    blob = arena.blob_off(idx)
    buf = arena.buf
    name = read_name(arena, idx, base)
    total = L.unpack_field(buf, base, T, "payload_len")
    p = blob + B.payload
    (fn_len,) = L.FN_LEN.unpack_from(buf, p)
    p += L.FN_LEN.size
    fn = bytes(buf[p:p + fn_len])
    data = bytes(buf[p + fn_len:blob + B.payload + total])
    return name, fn, data


def read_name(arena: Arena, idx: int, base: int) -> str:
    """The full name of slot ``idx`` (get_kthread_comm).

    Context: any.  Return: the name (str).
    """
    blob = arena.blob_off(idx) + B.fullname
    n = L.unpack_field(arena.buf, base, T, "name_len")
    return bytes(arena.buf[blob:blob + n]).decode("utf-8", "replace")


def store_traceback(arena: Arena, base: int, text: str) -> None:
    """Keep (the tail of) a traceback text in the slot's blob.

    Context: the kthread itself, or kthreadd for a create that failed.
    Return: None.
    """
    idx = (base - arena.params.tasks) // T.size
    raw = text.encode("utf-8", "replace")[-L.TB_MAX:]
    off = arena.blob_off(idx) + B.traceback
    arena.buf[off:off + len(raw)] = raw
    L.pack_field(arena.buf, base, T, "tb_len", len(raw))


def read_traceback(arena: Arena, idx: int, base: int) -> str | None:
    """The traceback text kept for slot ``idx``.

    Context: any.  Return: the text, or None if none was kept.
    """
    n = L.unpack_field(arena.buf, base, T, "tb_len")
    if not n:
        return None
    off = arena.blob_off(idx) + B.traceback
    return bytes(arena.buf[off:off + n]).decode("utf-8", "replace")
