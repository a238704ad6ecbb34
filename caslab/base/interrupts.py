"""Ctrl-C and SIGTERM as ``KeyboardInterrupt``, held back while the lab starts a process.

Every command tears the lab down on KeyboardInterrupt, by the pids it recorded. A signal
that arrived between ``Popen`` returning and the pid being recorded would leave that
process running and unknown to the teardown (seen: a mailbox server outlived a run
stopped during "starting Exchange roles"). Inside ``deferred()`` the handler only notes
the signal; the interrupt is raised when the section ends, once the pid is recorded.
Only the main thread defers: a signal handler runs there, and the interrupt must be
raised there too. ``caslab up`` installs the same handler with SIGTERM and SIGHUP raising
its own ``Terminated`` (Mininet's CLI swallows KeyboardInterrupt), so it keeps the deferral.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_depth = 0
_pending: int | None = None
_terminate: type[BaseException] | None = None  # what SIGTERM and SIGHUP raise (None: KeyboardInterrupt)


def _interrupt(signum: int) -> BaseException:
    if _terminate is not None and signum in (signal.SIGTERM, signal.SIGHUP):
        return _terminate(signal.Signals(signum).name)
    return KeyboardInterrupt(f"signal {signum}")


def _handler(signum, _frame) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise _interrupt(signum)


def install(terminate: type[BaseException] | None = None) -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (deferrable); with
    ``terminate``, SIGTERM and SIGHUP raise that instead (deferrable all the same)."""
    global _terminate
    _terminate = terminate
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    if terminate is not None:
        signal.signal(signal.SIGHUP, _handler)


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
            raise _interrupt(signum)
