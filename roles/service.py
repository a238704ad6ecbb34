"""Plumbing shared by the role services: config loading, framed request loops, shutdown.

Every role runs as ``python -m roles.<role> CONFIG.json`` inside its Mininet host. The
config holds everything (addresses, ports, event-log path), so the runner, not the role,
decides the experiment.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any, Awaitable, Callable

from labcommon.catalogue import INTERNAL_ERROR, PROTOCOL_ERROR, SERVICE_UP
from labcommon.events import EventLog, NullLog
from labcommon.protocol import ProtocolError, error, read_frame, write_frame

Handler = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


def load_config(argv: list[str] | None = None) -> dict[str, Any]:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m roles.<role> CONFIG.json")
    with open(args[0], encoding="utf-8") as handle:
        return json.load(handle)


def open_log(config: dict[str, Any], source: str):
    path = config.get("events")
    return EventLog(path, source) if path else NullLog()


async def serve_frames(reader, writer, handler: Handler, log, idle_timeout: float | None = None,
                       on_close: Callable[[dict[str, Any]], None] | None = None):
    """Answer framed requests one by one; bad frames get an error reply and a close."""
    state: dict[str, Any] = {"peer": writer.get_extra_info("peername")}
    try:
        while True:
            try:
                request = await asyncio.wait_for(read_frame(reader), idle_timeout)
            except ProtocolError as exc:
                log.emit(PROTOCOL_ERROR, peer=str(state["peer"]), reason=str(exc))
                await write_frame(writer, error("protocol", detail=str(exc)))
                return
            if request is None:
                return
            try:
                reply = await handler(request, state)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must cost one connection, not the service
                log.emit(INTERNAL_ERROR, peer=str(state["peer"]), reason=f"{type(exc).__name__}: {exc}"[:200])
                await write_frame(writer, error("internal", close=True))
                return
            await write_frame(writer, reply)
            if reply.get("close"):
                return
    except (asyncio.TimeoutError, ConnectionError, OSError):
        return
    finally:
        if on_close is not None:
            on_close(state)
        writer.close()


async def listen(config: dict[str, Any], role: str, log, handler: Handler,
                 on_close: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Serve framed requests on config['listen_port'] until cancelled."""

    async def on_client(reader, writer):
        await serve_frames(reader, writer, handler, log, on_close=on_close)

    listener = await asyncio.start_server(on_client, "0.0.0.0", config["listen_port"], reuse_address=True)
    log.emit(SERVICE_UP, role=role, port=config["listen_port"])
    async with listener:
        await listener.serve_forever()


def run_role(serve: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """The ``main()`` of every role: read the config named on the command line, serve."""
    config = load_config()
    run_forever(lambda: serve(config))


def run_forever(main: Callable[[], Awaitable[None]]) -> None:
    """Run a service until SIGTERM or SIGINT, then exit cleanly."""

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

    asyncio.run(runner())
