"""Reading one chunk from MongoDB: raw BSON batches of an ``_id`` range, and their label.

Mechanism: the read runs in one session. First a tiny majority read (a point lookup
of an ``_id`` nobody uses) fixes the label: its ``operationTime`` is a majority-committed
cluster time no later than the snapshot of the ``find`` that follows, so every change
after the label wins over the copied content (DESIGN §3.2); the label is never below the
stream's start time. Then ``find`` on the chunk's range (sorted by ``_id``, hinted to ``_id_``, read
concern majority) is consumed as raw batches (``find_raw_batches``): each batch is one
``bytes`` of concatenated documents, split here without decoding values; the ``_id`` of
each document is sliced out of its first element (MongoDB keeps ``_id`` first), falling
back to a decode only when it is not.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import bson
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.read_concern import ReadConcern

from backfill.bsonorder import Bracket, bracket, range_filter
from cdc.types import ClusterTime, Namespace

_INT32 = struct.Struct("<i")
_LABEL_PROBE = "\x00mongo2pg-read-label"
_ID_NAME = b"_id\x00"
# Value sizes of fixed-width BSON element types.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
          0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}
_LENGTH_PREFIXED_STRING = {0x02, 0x0D, 0x0E}
_LENGTH_PREFIXED_DOC = {0x03, 0x04, 0x0F}


def _value_size(raw: bytes, type_byte: int, pos: int) -> int:
    if type_byte in _FIXED:
        return _FIXED[type_byte]
    if type_byte in _LENGTH_PREFIXED_STRING:
        return 4 + int(_INT32.unpack_from(raw, pos)[0])
    if type_byte in _LENGTH_PREFIXED_DOC:
        return int(_INT32.unpack_from(raw, pos)[0])
    if type_byte == 0x05:  # binary: length, subtype, data
        return 5 + int(_INT32.unpack_from(raw, pos)[0])
    if type_byte == 0x0B:  # regex: two cstrings
        end = raw.index(b"\x00", raw.index(b"\x00", pos) + 1)
        return end + 1 - pos
    if type_byte == 0x0C:  # DBPointer: string + ObjectId
        return 4 + int(_INT32.unpack_from(raw, pos)[0]) + 12
    raise ValueError(f"unknown BSON element type {type_byte:#x}")


def id_document(raw: bytes) -> bytes:
    """BSON ``{"_id": value}`` of a raw document, the id keeping its original type."""
    type_byte = raw[4]
    if raw[5:9] == _ID_NAME:
        size = _value_size(raw, type_byte, 9)
        element = raw[4 : 9 + size]
        return _INT32.pack(4 + len(element) + 1) + element + b"\x00"
    return bson.encode({"_id": bson.decode(raw)["_id"]})


def split_documents(batch: bytes) -> list[bytes]:
    """The documents of a raw batch (concatenated BSON documents)."""
    docs: list[bytes] = []
    pos, end = 0, len(batch)
    while pos < end:
        (size,) = _INT32.unpack_from(batch, pos)
        docs.append(batch[pos : pos + size])
        pos += size
    return docs



async def id_brackets(client: AsyncMongoClient[Any], namespace: Namespace
                      ) -> tuple[Bracket, Bracket] | None:
    """Brackets of the smallest and largest ``_id`` present; None for an empty collection."""
    coll = client[namespace.db][namespace.coll]
    lo = await coll.find_one({}, {"_id": 1}, sort=[("_id", ASCENDING)])
    hi = await coll.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
    if lo is None or hi is None:
        return None
    return bracket(lo["_id"]), bracket(hi["_id"])


Span = tuple[Bracket, Bracket] | None


async def chunk_filter(client: AsyncMongoClient[Any], namespace: Namespace,
                       lower: Any | None, upper: Any | None,
                       spans: dict[Namespace, Span] | None = None) -> dict[str, Any] | None:
    """The ``find`` filter of ``[lower, upper)``; None when nothing can match (empty).

    ``spans`` caches :func:`id_brackets` per namespace for the caller's run. That is
    safe once the change stream is open: a document of a bracket outside a cached span
    was inserted after the span was read, so after the stream started, and the stream
    carries it. (On the sandbox, the descending lookup decodes the whole collection.)
    """
    if lower is not None and upper is not None and bracket(lower) == bracket(upper):
        return range_filter(lower, upper)
    if spans is not None and namespace in spans:
        span = spans[namespace]
    else:
        span = await id_brackets(client, namespace)
        if spans is not None:
            spans[namespace] = span
    if span is None:
        return None
    return range_filter(lower, upper, lowest=span[0], highest=span[1])


async def read_label(client: AsyncMongoClient[Any], namespace: Namespace,
                     session: AsyncClientSession, floor: ClusterTime) -> ClusterTime:
    """A majority-committed cluster time no later than what the next read will see."""
    coll = client[namespace.db].get_collection(
        namespace.coll, read_concern=ReadConcern("majority"))
    # A point lookup of an _id no collection uses: the cheapest majority read there is.
    await coll.find_one({"_id": _LABEL_PROBE}, {"_id": 1}, session=session)
    ts = session.operation_time
    if ts is None:
        return floor
    return max(ClusterTime.from_bson(ts), floor)


async def read_batches(client: AsyncMongoClient[Any], namespace: Namespace,
                       filter_: dict[str, Any], *, batch_size: int,
                       session: AsyncClientSession) -> AsyncIterator[list[bytes]]:
    """The raw documents of the range, one list per server batch, in ``_id`` order."""
    coll = client[namespace.db].get_collection(
        namespace.coll, read_concern=ReadConcern("majority"))
    cursor = coll.find_raw_batches(filter_, sort=[("_id", ASCENDING)], hint=[("_id", 1)],
                                   batch_size=batch_size, session=session)
    try:
        async for raw in cursor:
            docs = split_documents(raw)
            if docs:
                yield docs
    finally:
        # Also when the caller cancels the read (a stop): the server frees the cursor.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await cursor.close()
