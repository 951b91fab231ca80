"""Functions passed by reference: threadfns, works, hotplug callbacks.

kthreads are other processes, so a function travels as pickle carries it:
its module and qualified name.  This module holds the three rules every
place that takes a function follows:

* :func:`pickle_function` refuses, in the caller and before anything is
  changed, what cannot travel (lambdas, closures, nested functions) with a
  message that says what to do instead;
* :func:`check_callback` is the same for optional callbacks (``None`` allowed);
* :func:`prepare_main` makes functions of the caller's ``__main__`` loadable in
  kthreadd and kthreads, the way multiprocessing's forkserver does: the
  caller's main script is imported (not run as ``__main__``) once per process.

Runs in the caller (the checks) and in kthreadd, kthreads and cpuhp (the
preparation).
"""

from __future__ import annotations

import pickle
import pickletools

from .runtime import Runtime

__all__ = ["pickle_function", "pickle_data", "check_callback", "prepare_main", "modules_named"]

_main_prepared = False


def pickle_function(fn: object, what: str = "threadfn") -> bytes:
    """Pickle ``fn`` for another process of the runtime.

    Context: any.  Return: the pickle (bytes).
    Raises: TypeError if ``fn`` is not callable or cannot travel by reference.
    """
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")
    try:
        return pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"{what} {name!r} cannot be passed to a kthread: kthreads are other "
            "processes, and functions travel by reference (module + name, as pickle "
            "does), so lambdas, closures and nested functions cannot. Define it with "
            f"'def' at module level (or pass a picklable callable). ({exc})") from None


def pickle_data(data: object, what: str = "data") -> bytes:
    """Pickle a threadfn's or work's payload.

    Context: any.  Return: the pickle (bytes).  Raises: TypeError.
    """
    try:
        return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled for the kthread: {exc}") from None


def check_callback(name: str, fn: object) -> None:
    """Check an optional callback: None, or a function that travels by reference.

    Context: any.  Return: None.  Raises: TypeError naming ``name``.
    """
    if fn is None:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")
    pickle_function(fn, name)


def prepare_main(rt: Runtime) -> bool:
    """Import the caller's ``__main__`` here, as forkserver does, once per process.

    Context: kthreadd, a kthread or cpuhp (anything that unpickles functions the
    caller defined in its main script).  Return: True if it was imported now,
    False if it already was or the caller has no main script to import.
    """
    global _main_prepared
    prep = rt.main_prep
    if _main_prepared or not prep:
        return False
    _main_prepared = True
    import multiprocessing.spawn      # only processes that load __main__ pay for it
    multiprocessing.spawn.prepare(prep)
    return True


_STRING_OPS = frozenset(("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"))
_GET_OPS = frozenset(("GET", "BINGET", "LONG_BINGET"))


def modules_named(data: bytes) -> set[str]:
    """The modules a pickle's GLOBAL / STACK_GLOBAL opcodes name, read without running it.

    Context: any (kthreadd, to preload a threadfn's module without unpickling it).
    Return: module names (empty if the pickle does not parse).
    """
    mods: set[str] = set()
    strings: list[str] = []         # string operands, in stream order
    memo: dict[int, object] = {}
    last: object = None
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPS:
                last = arg
                strings.append(str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                memo[arg] = last
            elif name in _GET_OPS and isinstance(arg, int):
                last = memo.get(arg)
                if isinstance(last, str):
                    strings.append(last)
            elif name == "GLOBAL":
                mods.add(str(arg).split(" ", 1)[0])
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                mods.add(strings[-2])
            else:
                last = None
    except Exception:
        pass
    return mods
