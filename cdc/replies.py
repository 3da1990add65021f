"""Cursor replies (``find``/``aggregate``/``getMore``) read from their bytes.

A reply decoded as a ``RawBSONDocument`` costs per document of its batch: reading
``reply["cursor"]["nextBatch"]`` inflates the cursor and builds one ``RawBSONDocument``
per entry — for a change stream, about half of what the tailer spends on a reply. Here
the reply's elements are walked once: the cursor's ``id``, ``ns``, batch and
``postBatchResumeToken`` and the top-level ``operationTime``, and each batch entry is
sliced out as ``bytes``, nothing decoded. Unknown elements are stepped over by size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from cdc.mapping.keys import bson_value_size
from cdc.types import ClusterTime

_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_UINT32 = struct.Struct("<I")


def _split_array(reply: bytes, start: int, stop: int) -> list[bytes]:
    """The documents of the array elements from ``start`` (the first element's type
    byte) to ``stop`` (the array's terminating NUL), each as its BSON bytes."""
    if not 0 <= start <= stop <= len(reply):
        raise ValueError("malformed array of documents")
    docs: list[bytes] = []
    at = start
    while at < stop:  # entries: type 0x03, index name, document
        doc = reply.index(b"\x00", at + 1, stop) + 1
        if doc + 4 > stop:
            raise ValueError("malformed array of documents")
        (size,) = _INT32.unpack_from(reply, doc)
        if size < 5 or size > stop - doc:
            raise ValueError("malformed array of documents")
        docs.append(reply[doc:doc + size])
        at = doc + size
    return docs


split_array: Callable[[bytes, int, int], list[bytes]]
try:  # the same walk in C (one call per reply instead of a Python loop per entry)
    from cdc._fastevents import split_array as _split_c
except ImportError:  # extension not built: the Python walker
    split_array = _split_array
else:
    split_array = _split_c


class CursorReply(NamedTuple):
    cursor_id: int
    ns: str | None
    docs: list[bytes]
    """The batch (``firstBatch`` or ``nextBatch``), each entry as its BSON bytes."""
    post_batch_token: bytes | None
    """``postBatchResumeToken`` as BSON bytes (change streams only)."""
    operation_time: ClusterTime | None
    """The top-level ``operationTime``, if the reply has one."""


def read_cursor_reply(reply: bytes) -> CursorReply:
    """The cursor of ``reply`` (raises ``ValueError`` if it has none)."""
    op_time: ClusterTime | None = None
    cursor_at = -1
    pos, end = 4, len(reply) - 1
    while pos < end:  # top-level elements: cursor, operationTime, ...
        type_byte = reply[pos]
        name_end = reply.index(b"\x00", pos + 1)
        name = reply[pos + 1:name_end]
        pos = name_end + 1
        if name == b"cursor" and type_byte == 0x03:
            cursor_at = pos
        elif name == b"operationTime" and type_byte == 0x11:
            (inc,) = _UINT32.unpack_from(reply, pos)
            (secs,) = _UINT32.unpack_from(reply, pos + 4)
            op_time = ClusterTime(secs, inc)
        pos += bson_value_size(reply, pos, type_byte)
    if cursor_at < 0:
        raise ValueError("reply without a cursor")
    cursor_id = 0
    ns: str | None = None
    token: bytes | None = None
    docs: list[bytes] = []
    (size,) = _INT32.unpack_from(reply, cursor_at)
    pos, end = cursor_at + 4, cursor_at + size - 1
    while pos < end:  # cursor elements: id, ns, firstBatch/nextBatch, postBatchResumeToken
        type_byte = reply[pos]
        name_end = reply.index(b"\x00", pos + 1)
        name = reply[pos + 1:name_end]
        pos = name_end + 1
        if type_byte == 0x12 and name == b"id":
            (cursor_id,) = _INT64.unpack_from(reply, pos)
        elif type_byte == 0x02 and name == b"ns":
            (length,) = _INT32.unpack_from(reply, pos)
            ns = reply[pos + 4:pos + 3 + length].decode()
        elif type_byte == 0x04 and name in (b"firstBatch", b"nextBatch"):
            (array_size,) = _INT32.unpack_from(reply, pos)
            docs = split_array(reply, pos + 4, pos + array_size - 1)
        elif type_byte == 0x03 and name == b"postBatchResumeToken":
            (token_size,) = _INT32.unpack_from(reply, pos)
            token = reply[pos:pos + token_size]
        pos += bson_value_size(reply, pos, type_byte)
    return CursorReply(int(cursor_id), ns, docs, token, op_time)
