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
  caller's main script is imported (not run as ``__main__``) once per process;
* :func:`check_main` refuses, in the caller, a function (or data) of a
  ``__main__`` that cannot be imported that way: code on stdin, ``python -c``
  or an interactive session (there is no file), and a script without an
  ``if __name__ == "__main__":`` guard (importing it would run its top-level
  kproc calls again in kthreadd, where multiprocessing's spawn raises its
  "bootstrapping phase" RuntimeError).  The error says exactly that, at the
  call, instead of a pickle error from the kthread later.

Runs in the caller (the checks) and in kthreadd, kthreads and cpuhp (the
preparation).
"""

from __future__ import annotations

import pickle
import pickletools
import sys

from .runtime import Runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ast

__all__ = ["pickle_function", "pickle_data", "check_callback", "prepare_main", "check_main",
           "modules_named"]

_main_prepared = False
_main_verdict: tuple[str, str | None] | None = None     # (main file, problem) checked
GUARD = 'if __name__ == "__main__":'


def _main_problem() -> str | None:
    """Why the caller's ``__main__`` cannot be imported by kthreadd, or None."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or path.startswith("<"):
        return ("is code given on stdin, with python -c or typed interactively: there "
                "is no file for kthreadd and the kthreads to import it from (as with "
                "multiprocessing's spawn). Put the function in a module, or the code in "
                f"a script file with its entry point under {GUARD}")
    import ast      # here: the caller's check alone parses (kthreadd never does)
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None                      # cannot tell: let the import speak for itself
    if any(_is_main_guard(node) for node in tree.body):
        return None
    return (f"is the script {path}, which has no {GUARD} guard: kthreadd imports the "
            "script to find it (as multiprocessing's spawn does), which would run the "
            "script's top-level code, kproc calls included, again. Put the code that "
            f"starts the runtime and the kthreads under {GUARD}")


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either side, ``==`` or ``!=``)."""
    import ast      # loaded by _main_problem, its caller
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) and \
        any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides)


def check_main(raw: bytes, what: str, name: str) -> None:
    """Refuse a pickle that names ``__main__`` when kthreads cannot import it.

    @raw: the pickle; @what, @name: what it is (``"threadfn"``, its name).
    Context: the caller, before anything is changed.  Return: None.
    Raises: RuntimeError saying why (code on stdin / ``python -c``, or a script
    without an ``if __name__ == "__main__":`` guard) and what to do.
    """
    global _main_verdict
    if b"__main__" not in raw:
        return
    main_file = str(getattr(sys.modules.get("__main__"), "__file__", None))
    if _main_verdict is None or _main_verdict[0] != main_file:
        _main_verdict = (main_file, _main_problem())
    problem = _main_verdict[1]
    if problem is not None:
        raise RuntimeError(f"{what} {name!r} comes from __main__, which {problem}.")


def pickle_function(fn: object, what: str = "threadfn") -> bytes:
    """Pickle ``fn`` for another process of the runtime.

    Context: any.  Return: the pickle (bytes).
    Raises: TypeError if ``fn`` is not callable or cannot travel by reference;
    RuntimeError if it comes from a ``__main__`` kthreads cannot import
    (:func:`check_main`).
    """
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")
    try:
        raw = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"{what} {name!r} cannot be passed to a kthread: kthreads are other "
            "processes, and functions travel by reference (module + name, as pickle "
            "does), so lambdas, closures and nested functions cannot. Define it with "
            f"'def' at module level (or pass a picklable callable). ({exc})") from None
    check_main(raw, what, getattr(fn, "__qualname__", repr(fn)))
    return raw


def pickle_data(data: object, what: str = "data") -> bytes:
    """Pickle a threadfn's or work's payload.

    Context: any.  Return: the pickle (bytes).  Raises: TypeError; RuntimeError
    for objects of a ``__main__`` kthreads cannot import (:func:`check_main`).
    """
    try:
        raw = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled for the kthread: {exc}") from None
    check_main(raw, what, type(data).__qualname__)
    return raw


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
