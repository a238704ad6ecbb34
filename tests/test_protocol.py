"""Unit tests of roles/protocol.py: 4-byte big-endian length + UTF-8 JSON object frames.

Frames are fed to a real asyncio.StreamReader; nothing touches the network.
"""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labcommon.protocol import HEADER, MAX_DEPTH, MAX_FRAME, ProtocolError, decode_body, encode, error, read_frame, write_frame


def read_all(data: bytes, eof: bool = True, timeout: float = 5.0):
    """Read frames from `data` until EOF; returns (frames, exception or None)."""

    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        frames = []
        try:
            while True:
                frame = await asyncio.wait_for(read_frame(reader), timeout)
                if frame is None:
                    return frames, None
                frames.append(frame)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return frames, exc

    return asyncio.run(main())


def frame_of(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


# ---- encode / decode -----------------------------------------------------------------------


def test_encode_layout_is_big_endian_length_then_compact_json():
    data = encode({"op": "ping", "n": 1})
    assert data == b"\x00\x00\x00\x13" + b'{"op":"ping","n":1}'
    body = data[4:]
    assert len(body) == struct.unpack("!I", data[:4])[0]
    assert json.loads(body) == {"op": "ping", "n": 1}
    assert b" " not in body
    assert HEADER.size == 4


@settings(max_examples=50, deadline=None)
@given(messages)
def test_encode_then_decode_body_round_trips(message):
    data = encode(message)
    (length,) = HEADER.unpack(data[:4])
    assert length == len(data) - 4
    assert decode_body(data[4:]) == message


@settings(max_examples=30, deadline=None)
@given(st.lists(messages, min_size=0, max_size=5))
def test_read_frame_round_trips_a_stream_of_frames(stream):
    frames, exc = read_all(b"".join(encode(m) for m in stream))
    assert exc is None
    assert frames == stream


def test_non_ascii_text_round_trips():
    message = {"subject": "Grüße ✉ 日本語", "emoji": "😀"}
    frames, exc = read_all(encode(message))
    assert exc is None and frames == [message]


def test_frame_of_exactly_max_size_is_accepted():
    # {"x":"aaa..."} padded so the body is exactly MAX_FRAME bytes
    overhead = len(json.dumps({"x": ""}, separators=(",", ":")))
    message = {"x": "a" * (MAX_FRAME - overhead)}
    data = encode(message)
    assert len(data) == MAX_FRAME + 4
    frames, exc = read_all(data)
    assert exc is None and frames == [message]


def test_encode_rejects_an_oversized_message():
    overhead = len(json.dumps({"x": ""}, separators=(",", ":")))
    with pytest.raises(ProtocolError):
        encode({"x": "a" * (MAX_FRAME - overhead + 1)})


def test_error_helper_builds_an_error_reply():
    assert error("protocol", detail="bad") == {"ok": False, "error": "protocol", "detail": "bad"}
    assert decode_body(encode(error("x"))[4:]) == {"ok": False, "error": "x"}


# ---- read_frame on bad input ---------------------------------------------------------------


def test_clean_eof_returns_none():
    frames, exc = read_all(b"")
    assert frames == [] and exc is None


def test_clean_eof_after_whole_frames_returns_them_then_none():
    frames, exc = read_all(encode({"a": 1}) + encode({"b": 2}))
    assert frames == [{"a": 1}, {"b": 2}] and exc is None


@pytest.mark.parametrize("partial", [b"\x00", b"\x00\x00", b"\x00\x00\x00"])
def test_truncated_header_is_a_protocol_error(partial):
    frames, exc = read_all(partial)
    assert frames == [] and isinstance(exc, ProtocolError)
    assert "header" in str(exc)


def test_truncated_header_after_a_good_frame():
    frames, exc = read_all(encode({"a": 1}) + b"\x00\x00")
    assert frames == [{"a": 1}] and isinstance(exc, ProtocolError)


@pytest.mark.parametrize("cut", [0, 1, 5])
def test_truncated_body_is_a_protocol_error(cut):
    body = b'{"op":"read","folder":"inbox"}'
    frames, exc = read_all(struct.pack("!I", len(body)) + body[:cut])
    assert frames == [] and isinstance(exc, ProtocolError)
    assert "body" in str(exc)


def test_oversized_length_is_rejected_without_waiting_for_the_body():
    # no EOF and no body: a reader that tried to read MAX_FRAME+1 bytes would block forever
    frames, exc = read_all(struct.pack("!I", MAX_FRAME + 1), eof=False, timeout=2.0)
    assert frames == [] and isinstance(exc, ProtocolError), exc
    frames, exc = read_all(b"\xff\xff\xff\xff" + b"{}", eof=False, timeout=2.0)
    assert isinstance(exc, ProtocolError), exc


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"a":"\xc3"}', b"\x80"])
def test_non_utf8_body_is_a_protocol_error(body):
    frames, exc = read_all(frame_of(body))
    assert frames == [] and isinstance(exc, ProtocolError)
    with pytest.raises(ProtocolError):
        decode_body(body)


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"hello", b'{"a":1}{"b":2}', b'{"a":1,}'])
def test_non_json_body_is_a_protocol_error(body):
    frames, exc = read_all(frame_of(body))
    assert frames == [] and isinstance(exc, ProtocolError)


@pytest.mark.parametrize("body", [b"[]", b"[1,2]", b"1", b'"text"', b"null", b"true", b"3.5"])
def test_json_that_is_not_an_object_is_a_protocol_error(body):
    frames, exc = read_all(frame_of(body))
    assert frames == [] and isinstance(exc, ProtocolError)
    assert "object" in str(exc)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data):
    frames, exc = read_all(data, timeout=2.0)
    assert exc is None or isinstance(exc, ProtocolError), repr(exc)
    assert all(isinstance(f, dict) for f in frames)


def test_deeply_nested_json_is_a_protocol_error():
    body = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert len(body) < MAX_FRAME
    frames, exc = read_all(frame_of(body))
    assert isinstance(exc, ProtocolError), repr(exc)


def nested(depth: int) -> bytes:
    """An object whose value nests ``depth`` levels in all (the object itself counts)."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_the_labs_own_nesting_limit_holds_on_every_python():
    """Python 3.13's decoder parses what 3.11's refuses: the limit is the lab's, exact."""
    assert decode_body(nested(MAX_DEPTH)) == {"a": json.loads(b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1))}
    with pytest.raises(ProtocolError, match="nests deeper"):
        decode_body(nested(MAX_DEPTH + 1))
    assert decode_body(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == {"a": "[" * 41}, "brackets in strings"


def test_huge_integer_literal_is_a_protocol_error():
    body = b'{"a":' + b"1" * 5000 + b"}"
    frames, exc = read_all(frame_of(body))
    assert isinstance(exc, ProtocolError), repr(exc)


# ---- write_frame ---------------------------------------------------------------------------


class FakeWriter:
    def __init__(self):
        self.data = bytearray()
        self.drained = 0

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        self.drained += 1


def test_write_frame_writes_the_encoding_and_drains():
    writer = FakeWriter()
    asyncio.run(write_frame(writer, {"op": "ping"}))
    assert bytes(writer.data) == encode({"op": "ping"})
    assert writer.drained == 1
    frames, exc = read_all(bytes(writer.data))
    assert frames == [{"op": "ping"}] and exc is None
