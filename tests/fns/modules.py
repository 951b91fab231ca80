"""A threadfn that imports nothing: what it sees in ``sys.modules`` is kthreadd's."""

import os
import sys


def write_modules(path):
    """Write the kthread's module names to ``path`` (whole, by rename), return 0."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(sorted(sys.modules)))
    os.replace(tmp, path)
    return 0
