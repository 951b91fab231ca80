"""``python -m kproc``: the kproc command line."""

import sys

from ._cli import main

sys.exit(main())
