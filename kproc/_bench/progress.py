"""Progress bars on stderr: tqdm where it is installed, else a one-line
counter on a terminal (and nothing when stderr is not one).

Context: the command-line process.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Bar", "bar"]


class Bar:
    """What the callers use of a bar: ``update``, ``set_postfix_str`` and a
    settable ``total``; tqdm's when installed."""

    def __init__(self, total: float | None, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0.0
        self.postfix = ""
        self._tty = sys.stderr.isatty()
        self._shown = 0.0

    def update(self, n: float = 1) -> None:
        """Advance by ``n``."""
        self.n += n
        self._show()

    def set_postfix_str(self, s: str) -> None:
        """Show ``s`` after the count."""
        self.postfix = s
        self._show()

    def _show(self) -> None:
        now = time.monotonic()
        if not self._tty or now - self._shown < 0.2:
            return
        self._shown = now
        of = f"/{self.total:g}" if self.total else ""
        sys.stderr.write(f"\r{self.desc}: {self.n:g}{of} {self.postfix}\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        """Erase the line."""
        if self._tty and self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


@contextlib.contextmanager
def bar(total: float | None, desc: str, unit: str = "it") -> Iterator[Any]:
    """A progress bar for one phase.  @total: its length (None: unknown).
    Context: any.  Return (yields): a tqdm bar, or a ``Bar``."""
    try:
        from tqdm import tqdm
    except ImportError:
        plain = Bar(total, desc)
        try:
            yield plain
        finally:
            plain.close()
        return
    # A total in seconds (a float) is shown as seconds, not as a float count.
    fmt = None if not isinstance(total, float) else \
        "{desc}: {percentage:3.0f}%|{bar}| {elapsed} of " + f"{total:.0f} s" + "{postfix}"
    with tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
              dynamic_ncols=True, bar_format=fmt) as t:
        yield t
