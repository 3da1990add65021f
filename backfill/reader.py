"""Reading one chunk from MongoDB: raw BSON batches of an ``_id`` range, and their label.

Mechanism: the read runs in one session. First a tiny majority read (a point lookup
of an ``_id`` nobody uses) fixes the label: its ``operationTime`` is a majority-committed
cluster time no later than the snapshot of the ``find`` that follows, so every change
after the label wins over the copied content (DESIGN §3.2); the label is never below the
stream's start time. Then ``find``/``getMore`` on the chunk's range (sorted by ``_id``,
hinted to ``_id_``, read concern majority) are sent as commands whose replies stay
bytes: each batch's documents are sliced out of the reply without decoding values
(:func:`cursor_batch`); the ``_id`` of
each document is sliced out of its first element (MongoDB keeps ``_id`` first), falling
back to a decode only when it is not.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from backfill.bsonorder import Bracket, bracket, range_filter
from cdc.cursor import majority, majority_time
from cdc.replies import read_cursor_reply
from cdc.types import ClusterTime, Namespace

_INT32 = struct.Struct("<i")
_RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
_ID_NAME = b"_id\x00"
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
                     session: AsyncClientSession, floor: ClusterTime,
                     after: ClusterTime | None = None) -> ClusterTime:
    """A majority-committed cluster time no later than what the next read will see, and
    not before ``after`` (what the sink had applied when the read's lease was opened:
    see :meth:`cdc.sink.Sink.applied_time`)."""
    when = await majority_time(client, namespace, session=session, after=after)
    label = floor if when is None else max(when, floor)
    return max(label, after) if after is not None else label


def cursor_batch(reply: bytes) -> tuple[int, list[bytes]]:
    """``(cursor id, raw documents)`` of a ``find``/``getMore`` reply, read from its
    bytes (:func:`cdc.replies.read_cursor_reply`: no value is decoded)."""
    cursor = read_cursor_reply(reply)
    return cursor.cursor_id, cursor.docs


def _bytes(reply: RawBSONDocument) -> bytes:
    raw = reply.raw
    return raw if isinstance(raw, bytes) else bytes(raw)


async def read_batches(client: AsyncMongoClient[Any], namespace: Namespace,
                       filter_: dict[str, Any], *, batch_size: int,
                       session: AsyncClientSession, after: ClusterTime | None = None
                       ) -> AsyncIterator[list[bytes]]:
    """The raw documents of the range, one list per server batch, in ``_id`` order.

    ``find``/``getMore`` are sent as commands and their replies kept as bytes
    (:func:`cursor_batch`): pymongo's raw-batch cursor re-assembles each batch through
    a partial decode, about half of the client's read cost. With ``after`` (the read's
    label) the snapshot read is not older than it. A cursor left open (the caller
    stopped early, or failed) is killed.
    """
    db = client.get_database(namespace.db, codec_options=_RAW)
    reply = await db.command(
        {"find": namespace.coll, "filter": filter_, "sort": {"_id": 1},
         "hint": {"_id": 1}, "batchSize": batch_size,
         "readConcern": majority(after)},
        session=session, codec_options=_RAW)
    cursor_id, docs = cursor_batch(_bytes(reply))
    try:
        while True:
            if docs:
                yield docs
            if not cursor_id:
                return
            reply = await db.command(
                {"getMore": Int64(cursor_id), "collection": namespace.coll,
                 "batchSize": batch_size},
                session=session, codec_options=_RAW)
            cursor_id, docs = cursor_batch(_bytes(reply))
    finally:
        if cursor_id:
            # Also when the caller cancels the read (a stop): the server frees the cursor.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await db.command({"killCursors": namespace.coll,
                                      "cursors": [Int64(cursor_id)]}, session=session)
                except PyMongoError:
                    pass  # the server times the cursor out on its own
