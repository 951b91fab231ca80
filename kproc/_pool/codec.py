"""How a pool call and its outcome are encoded (the caller's and the worker's halves).

A call is ``fn`` by reference plus its arguments: ``[u32 fn pickle length][fn
pickle][pickle of (args, kwargs)]``, the last part left out when there are no
arguments (a no-op call then pickles nothing but, once, its function).  The
caller keeps the function's pickle per function and the worker the function
per pickle, so a hot function is pickled and looked up once per process.

An outcome is a code and bytes: OUT_NONE (the call returned None: no bytes),
OUT_VALUE (the result's pickle), OUT_EXC (the pickle of ``(exception,
traceback text)``).  As in ``concurrent.futures.process`` the exception comes
back with the remote traceback as its ``__cause__`` (a
``_RemoteTraceback`` whose text is the traceback formatted in the worker),
and what cannot be pickled is replaced by the pickling error, traceback
included, so the caller always learns why.

Runs in the caller (``encode_call``, ``decode_outcome``) and in the worker
kthreads (``decode_call``, ``encode_result``, ``encode_exception``).
"""

from __future__ import annotations

import pickle
import struct

from .._core.funcref import pickle_function, prepare_main
from .._core.runtime import Runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = ["encode_call", "encode_map_calls", "decode_call", "encode_result", "encode_exception",
           "decode_outcome", "worker_fns", "OUT_NONE", "OUT_VALUE", "OUT_EXC"]

OUT_NONE, OUT_VALUE, OUT_EXC = 0, 1, 2
_LEN = struct.Struct("=I")
_CACHE_MAX = 256
_fn_pickles: dict[object, bytes] = {}          # caller: fn -> its pickle
# worker: pickle -> fn (native/pool.c looks functions up here too)
worker_fns: dict[bytes, Callable[..., Any]] = {}


def _fn_pickle(fn: Callable[..., Any]) -> bytes:
    try:
        return _fn_pickles[fn]
    except KeyError:
        pass
    except TypeError:                 # unhashable callable: pickled every time
        return pickle_function(fn, "fn")
    raw = pickle_function(fn, "fn")
    if len(_fn_pickles) >= _CACHE_MAX:
        _fn_pickles.clear()
    _fn_pickles[fn] = raw
    return raw


def encode_call(fn: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any] | None, head: bytes | None = None) -> bytes:
    """Encode one call.  Context: the caller.

    @head: ``encode_call(fn, (), None)``, when the caller has it already (a map).
    Raises: TypeError if ``fn`` cannot travel by reference or an argument
    cannot be pickled (before anything is queued).
    """
    if head is None:
        raw = _fn_pickle(fn)
        head = _LEN.pack(len(raw)) + raw
    if not args and not kwargs:
        return head
    try:
        return head + pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"the arguments of {getattr(fn, '__qualname__', fn)!r} cannot be "
                        f"pickled for a pool worker: {exc}") from None


def encode_map_calls(fn: Callable[..., Any], argss: Iterable[tuple[Any, ...]]) -> list[bytes]:
    """``encode_call(fn, args, None)`` of each of @argss, in order (a map's calls).

    Context: the caller.  Raises: as encode_call(); what iterating @argss raises.
    """
    head = encode_call(fn, (), None)
    dumps, proto = pickle.dumps, pickle.HIGHEST_PROTOCOL
    out: list[bytes] = []
    append = out.append
    for args in argss:
        try:
            append(head + dumps((args, None), protocol=proto))
        except Exception:
            encode_call(fn, args, None, head)         # raises the TypeError
            raise
    return out


def _loads_with_main(rt: Runtime, raw: bytes | memoryview) -> Any:
    try:
        return pickle.loads(raw)
    except (AttributeError, ImportError):
        if not prepare_main(rt):      # a function of the caller's __main__, once
            raise
        return pickle.loads(raw)


def decode_call(rt: Runtime, raw: bytes) -> tuple[Callable[..., Any], tuple[Any, ...],
                                                    dict[str, Any]]:
    """Decode a call.  Context: a pool worker.  Raises: what unpickling raises."""
    (n,) = _LEN.unpack_from(raw)
    fraw = raw[4:4 + n]
    fn = worker_fns.get(fraw)
    if fn is None:
        fn = _loads_with_main(rt, fraw)
        if len(worker_fns) >= _CACHE_MAX:
            worker_fns.clear()
        worker_fns[fraw] = fn
    if len(raw) == 4 + n:
        return fn, (), {}
    args, kwargs = _loads_with_main(rt, memoryview(raw)[4 + n:])
    return fn, args, kwargs or {}


def encode_exception(exc: BaseException) -> tuple[int, bytes]:
    """(OUT_EXC, pickle of (exc, remote traceback text)).  Context: a pool worker.

    An exception that cannot be pickled is replaced by the pickling error.
    """
    import traceback    # here: a worker loads it on its first exception only
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None          # its frames hold every local of the call
    tb = f'\n"""\n{text}"""'
    try:
        return OUT_EXC, pickle.dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as perr:
        text2 = "".join(traceback.format_exception(type(perr), perr, perr.__traceback__))
        stand_in = pickle.PicklingError(f"the exception {type(exc).__name__}: {exc} "
                                        f"cannot be pickled: {perr}")
        return OUT_EXC, pickle.dumps((stand_in, f'\n"""\n{text}\n{text2}"""'))


def encode_result(value: object) -> tuple[int, bytes]:
    """(OUT_NONE, b"") or (OUT_VALUE, pickle); a pickling failure becomes its exception."""
    if value is None:
        return OUT_NONE, b""
    try:
        return OUT_VALUE, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return encode_exception(exc)


def decode_outcome(code: int, raw: bytes) -> tuple[bool, Any]:
    """(is_exception, value or exception) of an outcome.  Context: the caller.

    An exception gets the remote traceback as ``__cause__``; an outcome that
    cannot be unpickled here gives that error instead.
    """
    if code == OUT_NONE:
        return False, None
    try:
        value = pickle.loads(raw)
    except Exception as exc:
        return True, exc
    if code == OUT_VALUE:
        return False, value
    error, tb = value
    from concurrent.futures.process import _RemoteTraceback  # only failures pay for it
    error.__cause__ = _RemoteTraceback(tb)
    return True, error
