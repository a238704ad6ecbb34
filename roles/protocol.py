"""The lab's wire protocol: length-prefixed JSON frames (a stand-in for MAPI over RPC).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding
one object. Bad frames (oversized, truncated, not JSON, not an object) raise
``ProtocolError`` so that a service answers with an error or closes the connection,
and never crashes or hangs.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

MAX_FRAME = 64 * 1024
HEADER = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict[str, Any]) -> bytes:
    if not isinstance(message, dict):
        raise ProtocolError("a frame holds one JSON object")
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting or numbers
        raise ProtocolError(f"frame is not usable UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Read one frame; None on a clean EOF before a header, ProtocolError on garbage."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame body") from None
    return decode_body(body)


async def write_frame(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(encode(message))
    await writer.drain()


class FramedLink:
    """A client connection to a framed service, opened on demand, one call at a time.

    Any failure, including the caller cancelling a call (a timeout around it), closes the
    connection: a reply still on its way must never be read as the answer to the next call.
    """

    def __init__(self, address: str, timeout_s: float):
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.address = address
        self.timeout_s = timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        async with self.lock:
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout_s)
                await write_frame(self.writer, message)
                reply = await asyncio.wait_for(read_frame(self.reader), self.timeout_s)
                if reply is None:
                    raise ConnectionError("peer closed")
                return reply
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def error(reason: str, **fields: Any) -> dict[str, Any]:
    return {"ok": False, "error": reason, **fields}
