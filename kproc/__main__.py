"""``python -m kproc``: the kproc command line."""

import sys

from ._cli.main import main

sys.exit(main())
