"""What every in-host program shares, servers and clients alike: its configuration file,
its event log, and a clean stop on SIGTERM.

Each program runs as ``python -m <package>.<program> CONFIG.json`` inside its Mininet
host; the config holds everything (addresses, ports, the event log's path), so the runner,
not the program, decides the experiment. This sits on the common floor (``labcommon``) so
that a client (``traffic``) or an agent (``controllers``) needs nothing of the servers'
code (``roles``).

The servers (``run_with_config``: CAS, mailbox, autodiscover) run on uvloop, libuv's event
loop: the same asyncio programs, with less CPU per request (measured side by side at 1,000
sessions, CAS 0.57-0.59 -> 0.44-0.47 ms and mailbox 0.41-0.42 -> 0.33-0.35 ms of CPU per
operation). The clients and probers stay on asyncio's own loop: their kernel receive
stamps (``traffic.rxstamp``) need its socket transport, which reads through the Python
socket object; uvloop reads the descriptor itself.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, Awaitable, Callable

import uvloop

from labcommon.events import EventLog, NullLog
from labcommon.programs import ConfigError, Program, read_config


def load_config(record: Program, argv: list[str] | None = None) -> Any:
    """The program's typed configuration (``labcommon.programs``), from the file named on
    its command line; a file that does not match its record stops it with the reason."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit(f"usage: python -m {record.module} CONFIG.json")
    try:
        return read_config(record, args[0])
    except ConfigError as exc:
        raise SystemExit(f"{record.module}: {exc}") from None


def open_log(config: Any, source: str):
    return EventLog(config.events, source) if config.events else NullLog()


def run_with_config(record: Program, serve: Callable[[Any], Awaitable[None]]) -> None:
    """A server's ``main()``: read its config named on the command line, serve until
    stopped, on uvloop."""
    config = load_config(record)
    run_forever(lambda: serve(config), on_uvloop=True)


def run_forever(main: Callable[[], Awaitable[None]], on_uvloop: bool = False) -> None:
    """Run a program until SIGTERM or SIGINT, then exit cleanly (``on_uvloop``: on libuv's
    event loop rather than asyncio's own)."""

    async def runner():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(main())
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (task, waiter):
            pending.cancel()
        if task in done and task.exception():
            raise task.exception()

    if on_uvloop:
        uvloop.run(runner())
    else:
        asyncio.run(runner())
