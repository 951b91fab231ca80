"""Argument checks shared by every public function (SPEC §5 "Bad input").

Each check raises a clear ``TypeError``/``ValueError`` naming the argument
*before* anything is changed or any process created, and returns the value in
the form the caller needs (seconds as a float, a mask as a frozenset).  No
``assert``: these must hold under ``python -O`` too.

Inputs are bounded here too, so that no check does work proportional to a
hostile value: a duration beyond :data:`MAX_SECONDS` or a name format whose
field width could not fit a kthread name is refused before anything is
computed from it.

Environment variables are read through :func:`env_number` and
:func:`env_choice` (the table of every one kproc reads is here), so a bad
value names the variable.

Runs in whichever process calls the API.
"""

from __future__ import annotations

import itertools
import math
import os
import re

from .topology import Topology

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["check_int", "check_seconds", "check_cpu", "check_mask", "check_format_widths",
           "env_number", "env_choice", "check_environment", "MAX_SECONDS"]

# The largest finite duration kproc accepts (about 31 years): beyond it
# nanosecond deadlines stop being exact in a float and the C side's int64
# would overflow.  Where a wait may be infinite, ``math.inf`` says so.
MAX_SECONDS = 1e9
# A CPU mask argument is read this far at most (CPUMASK_BYTES * 8 CPUs, and
# room for repeats).
MASK_ITEMS_MAX = 1 << 14


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool), within [lo, hi] when given.

    Context: any.  Return: ``value``.
    Raises: TypeError (not an int), ValueError (out of range).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        shown = value if value.bit_length() < 64 else f"an int of {value.bit_length()} bits"
        raise ValueError(f"{name} must be between {lo} and {hi}, not {shown}")
    return value


def check_seconds(name: str, value: object, *, infinite: bool = False,
                  unit: str = "seconds") -> float:
    """Check a duration: a real number >= 0, not NaN, at most MAX_SECONDS (in
    ``unit``), or infinite where ``infinite`` allows it.

    @unit: "seconds" or "ms"; the bound is MAX_SECONDS expressed in it.
    Context: any.  Return: ``value`` as a float (``math.inf`` only if allowed).
    Raises: TypeError (not a number), ValueError (negative, NaN, too large,
    or infinite where infinity is not allowed).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of {unit}, not {type(value).__name__}")
    limit = MAX_SECONDS * (1000 if unit == "ms" else 1)
    forever = " (or math.inf to wait forever)" if infinite else ""
    if isinstance(value, int):          # compared as an int: 2**2000 has no float
        if value < 0:
            raise ValueError(f"{name} must be >= 0 {unit}, not {value}")
        if value > limit:
            raise ValueError(f"{name} must be at most {limit:g} {unit}{forever}, not a "
                             f"{value.bit_length()}-bit int")
        return float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 {unit}, not {value}")
    if math.isinf(value):
        if not infinite:
            raise ValueError(f"{name} must be a finite number of {unit} >= 0, not {value}")
        return value
    if value > limit:
        raise ValueError(f"{name} must be at most {limit:g} {unit}{forever}, not {value:g}")
    return float(value)


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
    if isinstance(cpus, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of CPU numbers, not "
                        f"{type(cpus).__name__}")
    try:
        it = iter(cpus)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of CPU numbers, not "
                        f"{type(cpus).__name__}") from None
    # Bounded: an endless iterable is refused, not collected until memory runs out.
    items = list(itertools.islice(it, MASK_ITEMS_MAX + 1))
    if len(items) > MASK_ITEMS_MAX:
        raise ValueError(f"{name} names more than {MASK_ITEMS_MAX} CPUs")
    try:
        mask = frozenset(items)
    except TypeError:
        raise TypeError(f"{name} must hold CPU numbers (ints)") from None
    for cpu in mask:
        check_cpu(topology, cpu, f"a CPU of {name}")
    if not mask:
        raise ValueError(f"{name} must not be empty")
    return mask


# One printf conversion: %[(key)][flags][width][.precision][length]type.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+)?)?[hlL]?(.?)", re.S)


def check_format_widths(name: str, fmt: str, args: Sequence[object], limit: int) -> None:
    """Refuse a printf-style ``fmt`` whose field widths or precisions (literal,
    or ``*`` taken from ``args``) exceed ``limit``, *before* it is formatted:
    ``'%2147483648d' % 1`` would build a 2 GiB string only to be refused for
    its length.

    Context: any.  Raises: ValueError naming ``name``.
    """
    arg = 0
    for m in _CONVERSION.finditer(fmt):
        for part in (m.group(1), m.group(2)):
            if part == "*":
                value = args[arg] if arg < len(args) else None
                if isinstance(value, int) and abs(value) > limit:
                    raise ValueError(f"{name} {fmt!r}: a '*' field width of {value} "
                                     f"exceeds {limit}, the longest name there may be")
                arg += 1
            elif part and (len(part) > 9 or int(part) > limit):
                raise ValueError(f"{name} {fmt!r}: field width {part} exceeds {limit}, "
                                 "the longest name there may be")
        if m.group(3) != "%":
            arg += 1


# Every variable kproc reads: numbers as (lo, hi, integer), the others as choices.
ENV_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "KPROC_SPIN_US": (0, 1e6, False),
    "KPROC_TIMER_SPIN_US": (0, 1e6, False),
    "KPROC_SPARES": (0, 64, True),
    "KPROC_HUNG_TASK_TIMEOUT_SECS": (0, MAX_SECONDS, False),
}
ENV_CHOICES: dict[str, tuple[str, ...]] = {
    "KPROC_BACKEND": ("futex", "posix"),
    "KPROC_NATIVE": ("0", "1"),
    "KPROC_STRICT": ("0", "1"),
}


def env_number(var: str) -> float | None:
    """Read the number in environment variable ``var`` (one of ENV_NUMBERS).

    Context: any.  Return: the value, or None when unset or empty.
    Raises: ValueError naming the variable and what it must hold.
    """
    lo, hi, integer = ENV_NUMBERS[var]
    text = os.environ.get(var, "").strip()
    if not text:
        return None
    kind = "an integer" if integer else "a number"
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not lo <= value <= hi:
        raise ValueError(f"environment variable {var}={text[:40]!r} must be {kind} "
                         f"between {lo:g} and {hi:g}")
    return value


def env_choice(var: str) -> str | None:
    """Read environment variable ``var`` (one of ENV_CHOICES).

    Context: any.  Return: the value, or None when unset or empty.
    Raises: ValueError naming the variable and the choices.
    """
    choices = ENV_CHOICES[var]
    text = os.environ.get(var, "")
    if not text:
        return None
    if text not in choices:
        raise ValueError(f"environment variable {var}={text[:40]!r} must be one of "
                         + ", ".join(repr(c) for c in choices))
    return text


def check_environment() -> None:
    """Check every KPROC_* variable kproc reads (``start()`` calls it first, so a
    bad value is named before anything is made, not found later by kthreadd).

    Context: any.  Raises: ValueError naming the variable.
    """
    for var in ENV_NUMBERS:
        env_number(var)
    for var in ENV_CHOICES:
        env_choice(var)
