"""A module that starts a thread when it is imported (preloaded in kthreadd by
tests/test_fork_bare.py): kthreadd is then no longer single-threaded."""

import threading

from fns.atfork import _reply

_forever = threading.Event()
threading.Thread(target=_forever.wait, name="preloaded", daemon=True).start()


def threads_seen(done):
    """threadfn: how many threads this kthread's threading module knows of."""
    return _reply(threading.active_count(), done)
