"""What the role services (CAS, mailbox, autodiscover) share: framed request loops and
their bounds. What every in-host program shares (its config, its event log, a clean stop)
is ``labcommon.runtime``.

Bounds, so a long run (or a hostile peer) cannot wear a service down: a connection idle
for ``idle_timeout_s`` (default 300 s) is closed, a frame whose header arrived must be
complete within ``partial_timeout_s`` (10 s), the open-file limit is raised to the hard
limit at start, and a service stops accepting more than ``max_connections`` at once.
Admin requests (activate a database copy, change a RpcClientAccessServer) are served on
a second listener bound to the host's loopback (``ADMIN_PORT``): only a process inside the
host (``roles.admin``, run there by the runner) reaches it, never a client host.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, Awaitable, Callable

from labcommon.catalogue import IDLE_CLOSED, INTERNAL_ERROR, PROTOCOL_ERROR, SERVICE_UP
from labcommon.programs import ServiceConfig
from labcommon.protocol import HEADER, MAX_FRAME, ProtocolError, decode_body, encode, error, write_frame

Handler = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]
IDLE_TIMEOUT_S = ServiceConfig.idle_timeout_s  # the configuration's defaults, declared there once
PARTIAL_TIMEOUT_S = ServiceConfig.partial_timeout_s


def raise_open_files_limit() -> int:
    """Up to the hard limit: a CAS with a thousand sessions needs more than 1,024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def read_bounded(reader: asyncio.StreamReader, idle_s: float | None, partial_s: float) -> dict | None:
    """One frame: the header may take ``idle_s`` to come, the rest must follow within
    ``partial_s``. None on a clean EOF; ProtocolError on garbage; TimeoutError with
    ``args[0]`` 'idle' or 'partial_frame' when a peer is too slow."""
    try:
        header = await asyncio.wait_for(reader.readexactly(HEADER.size), idle_s)
    except asyncio.TimeoutError:
        raise asyncio.TimeoutError("idle") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
    try:
        body = await asyncio.wait_for(reader.readexactly(length), partial_s)
    except asyncio.TimeoutError:
        raise asyncio.TimeoutError("partial_frame") from None
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame body") from None
    return decode_body(body)


async def serve_frames(reader, writer, handler: Handler, log, idle_timeout: float | None = IDLE_TIMEOUT_S,
                       on_close: Callable[[dict[str, Any]], None] | None = None,
                       partial_timeout: float = PARTIAL_TIMEOUT_S):
    """Answer framed requests one by one; bad frames get an error reply and a close."""
    state: dict[str, Any] = {"peer": writer.get_extra_info("peername")}
    try:
        while True:
            try:
                request = await read_bounded(reader, idle_timeout, partial_timeout)
            except ProtocolError as exc:
                log.emit(PROTOCOL_ERROR, peer=str(state["peer"]), reason=str(exc))
                await write_frame(writer, error("protocol", detail=str(exc)))
                return
            except asyncio.TimeoutError as exc:
                log.emit(IDLE_CLOSED, peer=str(state["peer"]), reason=str(exc) or "idle")
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
            try:
                data = encode(reply)
            except ProtocolError as exc:  # a reply too large for a frame: a bug, not the peer's doing
                log.emit(INTERNAL_ERROR, peer=str(state["peer"]), reason=f"ProtocolError: {exc}"[:200])
                await write_frame(writer, error("internal", close=True))
                return
            writer.write(data)
            await writer.drain()
            if reply.get("close"):
                return
    except (asyncio.TimeoutError, ConnectionError, OSError):
        return
    finally:
        if on_close is not None:
            on_close(state)
        writer.close()


async def listen(config: ServiceConfig, role: str, log, handler: Handler,
                 on_close: Callable[[dict[str, Any]], None] | None = None,
                 admin: Handler | None = None) -> None:
    """Serve framed requests on config.listen_port until cancelled; with ``admin``,
    also serve admin requests on the host's loopback only."""
    open_connections = 0
    idle, partial, limit = config.idle_timeout_s, config.partial_timeout_s, config.max_connections

    async def on_client(reader, writer):
        nonlocal open_connections
        if open_connections >= limit:
            writer.close()
            return
        open_connections += 1
        try:
            await serve_frames(reader, writer, handler, log, idle, on_close, partial)
        finally:
            open_connections -= 1

    async def on_admin(reader, writer):
        await serve_frames(reader, writer, admin, log, idle, partial_timeout=partial)

    raise_open_files_limit()
    listener = await asyncio.start_server(on_client, "0.0.0.0", config.listen_port, reuse_address=True,
                                          backlog=1024)
    servers = [listener]
    if admin is not None:
        servers.append(await asyncio.start_server(on_admin, "127.0.0.1", config.admin_port,
                                                  reuse_address=True))
    log.emit(SERVICE_UP, role=role, port=config.listen_port)
    await asyncio.gather(*(s.serve_forever() for s in servers))
