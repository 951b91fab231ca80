"""How every ``kproc`` subcommand prints: JSON (``--json``) or text.

One place, so that ``--json`` means the same everywhere: indented JSON and a
final newline on stdout.
Context: the command-line process.
"""

import json
import sys

__all__ = ["print_json", "print_result"]


def print_json(obj):
    """Print ``obj`` as indented JSON and a newline."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_result(result, as_json, render):
    """Print ``result`` as JSON, or as the text ``render(result)``.  Return: 0."""
    if as_json:
        print_json(result)
    else:
        print(render(result))
    return 0
