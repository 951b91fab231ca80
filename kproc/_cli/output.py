"""How every ``kproc`` subcommand prints: JSON (``--json``) or text.

One place, so that ``--json`` means the same everywhere: indented JSON and a
final newline on stdout.
Context: the command-line process.
"""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    R = TypeVar("R")

__all__ = ["print_json", "print_result"]


def print_json(obj: object) -> None:
    """Print ``obj`` as indented JSON and a newline."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_result(result: R, as_json: bool, render: Callable[[R], str]) -> int:
    """Print ``result`` as JSON, or as the text ``render(result)``.  Return: 0."""
    if as_json:
        print_json(result)
    else:
        print(render(result))
    return 0
