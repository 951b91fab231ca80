"""``python -m benchmarks [options]``: the same as ``kproc bench [options]``."""

import sys

from kproc._cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
