"""The MongoDB wire protocol: framing of requests and replies.

Every message starts with a 16-byte header (messageLength, requestID, responseTo,
opCode, all little-endian int32). Requests arrive as OP_MSG (2013): uint32 flagBits
(bit 0 checksumPresent, bit 1 moreToCome, bit 16 exhaustAllowed), then sections — kind 0
is the command body, kind 1 a document sequence (int32 size, cstring identifier, BSON
documents) that the server folds into the body under that identifier — and a CRC-32C
trailer when checksumPresent. Drivers still open a connection with a legacy OP_QUERY
(2004) ``isMaster`` on ``admin.$cmd``, answered with OP_REPLY (1). Anything else, or a
message that does not parse, raises :class:`ProtocolError`, and the server closes that
one connection. Document sequences are kept as raw bytes so inserted documents go to
storage without a decode/encode round trip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
CHECKSUM_PRESENT = 1
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16
MAX_MESSAGE_SIZE = 48_000_000
HEADER = struct.Struct("<iiii")
_INT32 = struct.Struct("<i")
_UINT32 = struct.Struct("<I")

CODEC: CodecOptions[dict[str, Any]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class ProtocolError(Exception):
    """Raised when a client sends bytes that are not a well-formed supported message."""


@dataclass
class Request:
    """One decoded command: its body, raw document sequences and how to answer."""

    request_id: int
    op_code: int
    flags: int
    body: dict[str, Any]
    sequences: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def more_to_come(self) -> bool:
        return self.op_code == OP_MSG and bool(self.flags & MORE_TO_COME)


def decode(raw: bytes | memoryview) -> dict[str, Any]:
    doc: dict[str, Any] = bson.decode(raw, CODEC)
    return doc


def _cstring(buf: memoryview, pos: int) -> tuple[str, int]:
    end = bytes(buf[pos:]).index(b"\x00") if pos < len(buf) else -1
    if end < 0:
        raise ProtocolError("unterminated cstring")
    return bytes(buf[pos : pos + end]).decode(), pos + end + 1


def _split_documents(buf: memoryview) -> list[bytes]:
    docs, pos = [], 0
    while pos < len(buf):
        if pos + 5 > len(buf):
            raise ProtocolError("truncated document in sequence")
        size = _INT32.unpack_from(buf, pos)[0]
        if size < 5 or pos + size > len(buf):
            raise ProtocolError("bad document length in sequence")
        docs.append(bytes(buf[pos : pos + size]))
        pos += size
    return docs


def parse(request_id: int, op_code: int, payload: bytes) -> Request:
    """Decode the part of a message after its header."""
    try:
        if op_code == OP_MSG:
            return _parse_msg(request_id, payload)
        if op_code == OP_QUERY:
            return _parse_query(request_id, payload)
    except ProtocolError:
        raise
    except Exception as exc:  # bson.errors.InvalidBSON, struct.error, UnicodeError ...
        raise ProtocolError(f"malformed message: {exc}") from exc
    raise ProtocolError(f"unsupported opCode {op_code}")


def _parse_msg(request_id: int, payload: bytes) -> Request:
    buf = memoryview(payload)
    flags = _UINT32.unpack_from(buf, 0)[0]
    end = len(buf) - (4 if flags & CHECKSUM_PRESENT else 0)
    pos, body, sequences = 4, None, {}
    while pos < end:
        kind = buf[pos]
        pos += 1
        if kind == 0:
            size = _INT32.unpack_from(buf, pos)[0]
            if size < 5 or pos + size > end:
                raise ProtocolError("bad body length")
            body = decode(buf[pos : pos + size])
            pos += size
        elif kind == 1:
            size = _INT32.unpack_from(buf, pos)[0]
            if size < 5 or pos + size > end:
                raise ProtocolError("bad sequence length")
            ident, start = _cstring(buf[: pos + size], pos + 4)
            sequences[ident] = _split_documents(buf[start : pos + size])
            pos += size
        else:
            raise ProtocolError(f"unknown section kind {kind}")
    if body is None:
        raise ProtocolError("OP_MSG without a body section")
    return Request(request_id, OP_MSG, flags, body, sequences)


def _parse_query(request_id: int, payload: bytes) -> Request:
    buf = memoryview(payload)
    flags = _INT32.unpack_from(buf, 0)[0]
    collection, pos = _cstring(buf, 4)
    pos += 8  # numberToSkip, numberToReturn
    size = _INT32.unpack_from(buf, pos)[0]
    query = decode(buf[pos : pos + size])
    if "$query" in query:
        query = dict(query["$query"])
    if not collection.endswith(".$cmd"):
        raise ProtocolError("OP_QUERY is only supported for commands")
    query.setdefault("$db", collection[: -len(".$cmd")])
    return Request(request_id, OP_QUERY, flags, query)


def reply(request: Request, body: bytes, request_id: int) -> bytes:
    """Frame an encoded reply body for ``request`` (OP_MSG, or OP_REPLY to OP_QUERY)."""
    if request.op_code == OP_QUERY:
        payload = struct.pack("<iqii", 0, 0, 0, 1) + body
        op = OP_REPLY
    else:
        payload = b"\x00\x00\x00\x00\x00" + body
        op = OP_MSG
    return HEADER.pack(16 + len(payload), request_id, request.request_id, op) + payload
