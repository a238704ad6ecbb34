"""Ctrl-C and SIGTERM as ``KeyboardInterrupt``, held back while the lab starts a process.

Every command tears the lab down on KeyboardInterrupt, by the pids it recorded. A signal
that arrived between ``Popen`` returning and the pid being recorded would leave that
process running and unknown to the teardown (seen: a mailbox server outlived a run
stopped during "starting Exchange roles"). Inside ``deferred()`` the handler only notes
the signal; the interrupt is raised when the section ends, once the pid is recorded.
Only the main thread defers: a signal handler runs there, and the interrupt must be
raised there too.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_depth = 0
_pending: int | None = None


def _handler(signum, _frame) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (deferrable)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back an interrupt until the block ends (main thread only)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise KeyboardInterrupt(f"signal {signum}")
