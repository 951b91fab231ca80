"""Argument checks shared by every public function (SPEC §5 "Bad input").

Each check raises a clear ``TypeError``/``ValueError`` naming the argument
*before* anything is changed or any process created, and returns the value in
the form the caller needs (seconds as a float, a mask as a frozenset).  No
``assert``: these must hold under ``python -O`` too.

Runs in whichever process calls the API.
"""

from __future__ import annotations

import math

from .topology import Topology

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["check_int", "check_seconds", "check_cpu", "check_mask"]

# The largest finite sleep kproc accepts: beyond it nanosecond deadlines stop
# being exact in a float and the C side's int64 would overflow.
MAX_SECONDS = 1e9


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool), within [lo, hi] when given.

    Context: any.  Return: ``value``.
    Raises: TypeError (not an int), ValueError (out of range).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def check_seconds(name: str, value: object, *, infinite: bool = False,
                  unit: str = "seconds") -> float:
    """Check a duration: a real number >= 0, not NaN, and finite unless ``infinite``.

    @unit: how the message names the unit ("seconds", "ms").
    Context: any.  Return: ``value`` as given.
    Raises: TypeError (not a number), ValueError (negative, NaN, or infinite
    where infinity is not allowed).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of {unit}, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 {unit}, not {value}")
    if not infinite and math.isinf(value):
        raise ValueError(f"{name} must be a finite number of {unit} >= 0, not {value}")
    return value


def check_cpu(topology: Topology, cpu: object, name: str = "cpu") -> int:
    """Check that ``cpu`` is an int naming a possible CPU of ``topology``.

    Context: any.  Return: ``cpu``.
    Raises: TypeError, ValueError (not a possible CPU).
    """
    value = check_int(name, cpu)
    topology.check_possible(value)
    return value


def check_mask(topology: Topology, cpus: Iterable[int], name: str = "cpus") -> frozenset[int]:
    """Check a non-empty iterable of possible CPUs.

    Context: any.  Return: the CPUs as a frozenset.
    Raises: TypeError (not an iterable of ints), ValueError (empty, or a CPU
    that is not possible).
    """
    try:
        mask = frozenset(cpus)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of CPU numbers, not "
                        f"{type(cpus).__name__}") from None
    for cpu in mask:
        check_cpu(topology, cpu)
    if not mask:
        raise ValueError(f"{name} must not be empty")
    return mask
