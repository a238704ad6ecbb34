"""The lab's wire protocol: length-prefixed JSON frames (a stand-in for MAPI over RPC).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding
one object. Bad frames (oversized, truncated, not JSON, not an object, nested deeper than
``MAX_DEPTH``) raise ``ProtocolError`` so that a service answers with an error or closes
the connection, and never crashes or hangs.

The protocol is declared here once: services and clients frame with ``encode`` /
``read_frame``, and the offline capture analysis reads the same frames from the wire with
``peek``, which understands a frame cut short by a capture's snap length. ``encode``
writes the header keys (``HEAD_KEYS``: op, ok, session, error) first, so they stay inside
a short snap length; ``peek`` does not rely on that order when the keys are there.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

MAX_FRAME = 64 * 1024
MAX_DEPTH = 32  # the lab's own nesting limit: the json module's depends on the Python version
HEADER = struct.Struct("!I")
HEAD_KEYS = ("op", "ok", "session", "error")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict[str, Any]) -> bytes:
    if not isinstance(message, dict):
        raise ProtocolError("a frame holds one JSON object")
    ordered = {k: message[k] for k in HEAD_KEYS if k in message}
    ordered.update((k, v) for k, v in message.items() if k not in ordered)
    body = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def nesting_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        if nesting_depth(text) > MAX_DEPTH:
            raise ProtocolError(f"frame nests deeper than {MAX_DEPTH} levels")
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd numbers
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


# ---------------------------------------------------------------- reading frames off the wire

@dataclass(frozen=True)
class FramePeek:
    """What a (possibly truncated) frame at the start of a TCP payload says."""

    length: int | None          # the frame's declared body length (None: header cut off)
    fields: dict[str, Any]      # top-level scalar fields read before the cut

    @property
    def op(self) -> str | None:
        value = self.fields.get("op")
        return value if isinstance(value, str) else None

    @property
    def ok(self) -> bool | None:
        value = self.fields.get("ok")
        return value if isinstance(value, bool) else None

    @property
    def session(self) -> str | None:
        value = self.fields.get("session")
        return value if isinstance(value, str) else None


_DECODER = json.JSONDecoder()


def peek(payload: bytes) -> FramePeek:
    """Read the top-level fields of the frame that starts ``payload``, as far as the bytes
    go: a capture cuts frames at its snap length, so whatever was complete is returned and
    the rest is simply absent. Never raises."""
    if len(payload) < HEADER.size:
        return FramePeek(None, {})
    (length,) = HEADER.unpack(payload[:HEADER.size])
    text = payload[HEADER.size:HEADER.size + length].decode("utf-8", errors="ignore")
    return FramePeek(length, _scan_object(text))


def _scan_object(text: str) -> dict[str, Any]:
    """Top-level key/value pairs of a JSON object prefix, stopping at the first cut."""
    out: dict[str, Any] = {}
    i = _skip(text, 0)
    if i >= len(text) or text[i] != "{":
        return out
    i += 1
    while True:
        i = _skip(text, i)
        if i >= len(text) or text[i] != '"':
            return out
        try:
            key, i = _DECODER.raw_decode(text, i)
            i = _skip(text, i)
            if i >= len(text) or text[i] != ":":
                return out
            value, i = _DECODER.raw_decode(text, _skip(text, i + 1))
        except (ValueError, RecursionError):
            return out
        if not isinstance(value, (dict, list)):
            out[key] = value
        i = _skip(text, i)
        if i >= len(text) or text[i] != ",":
            return out
        i += 1


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


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

    async def call(self, message: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        async with self.lock:
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), timeout)
                await write_frame(self.writer, message)
                reply = await asyncio.wait_for(read_frame(self.reader), timeout)
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
