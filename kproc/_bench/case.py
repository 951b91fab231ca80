"""``python -m kproc._bench.case NAME ROUNDS``: one benchmark case in this
process; its result goes to stdout as the last line, JSON.

Context: a process of its own, started by the harness.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from . import create, hotplug, lateness, parking, pingpong, pool, workers

__all__ = ["CASES", "main"]

CASES: dict[str, Any] = {}
for _family in (pingpong, create, workers, parking, lateness, hotplug, pool):
    CASES.update(_family.CASES)


def main(argv: list[str]) -> int:
    """Run case ``argv[0]`` for ``argv[1]`` rounds.  Return: exit status
    (2 for an unknown case or bad rounds)."""
    if len(argv) != 2 or argv[0] not in CASES or not argv[1].isdigit():
        print(f"usage: python -m kproc._bench.case NAME ROUNDS; names: {sorted(CASES)}",
              file=sys.stderr)
        return 2
    result = CASES[argv[0]](int(argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
