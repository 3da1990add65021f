"""One change-stream cursor driven by raw ``aggregate`` / ``getMore`` commands.

The tailer does not use pymongo's ``watch()`` helper. It issues the commands itself,
with replies kept as bytes (:func:`cdc.replies.read_cursor_reply` slices each event out
of the reply, nothing decoded), because it needs three things the helper hides:

* **every reply's metadata** — ``postBatchResumeToken`` *and* the reply's
  ``operationTime``: an empty batch must still advance the checkpoint, and its cluster
  time has to come from somewhere (DESIGN §3.3);
* **resume control** — ``watch()`` resumes on its own from the token it last *read*;
  the tailer must resume from the token it last *committed* to PostgreSQL, and must
  see history-loss errors (286/280/260) instead of a silent restart;
* **per-``getMore`` ``maxTimeMS``** — a half-full batch waits only as long as the batch
  window has left, an idle stream waits ``max_await_ms``.

Each cursor lives in one explicit session (MongoDB binds a cursor to the session that
opened it; an implicit session per command would make ``getMore`` fail). Scope is the
whole deployment (``aggregate: 1`` on ``admin`` with ``allChangesForCluster``) or one
database when every watched namespace lives in it; a ``$match`` on ``ns`` filters
server-side. ``$changeStreamSplitLargeEvent`` is appended when enabled; a server that
does not know the stage (before 6.0.9/7.0) makes the tailer retry without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from bson.timestamp import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import OperationFailure, PyMongoError

from cdc.errors import HISTORY_LOST_CODES, HistoryLostError, SourceUnavailable
from cdc.events import token_cluster_time
from cdc.replies import CursorReply, read_cursor_reply
from cdc.types import ClusterTime, Namespace

RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
UNKNOWN_STAGE_CODES = frozenset({40324})  # "Unrecognized pipeline stage name"
# The change-streams spec lists these three as never resumable *by a driver* on getMore.
# CappedPositionLost: the oplog entries under the cursor's position were overwritten, so
# history between the checkpoint (at or before it) and now is gone — history lost.
POSITION_LOST_CODES = frozenset({136})
# CursorKilled / Interrupted: someone ended this cursor (killCursors, killOp). The
# tailer's own resume point is its committed checkpoint, which the kill does not touch,
# so reopening from it is safe (an unknown token would still say 286): transient.
CURSOR_ENDED_CODES = frozenset({237, 11601})


class StartAt(msgspec.Struct, frozen=True):
    """Where a stream opens: after a token, or at an operation time."""

    resume_after: bytes | None = None
    start_after: bytes | None = None
    """Like ``resume_after`` but may pass an ``invalidate`` (MongoDB 4.2+)."""
    at_time: ClusterTime | None = None


class Reply(msgspec.Struct, frozen=True):
    """One cursor batch: raw events plus the position the server scanned up to."""

    events: list[bytes]
    """Each event as its BSON bytes."""
    post_batch_token: bytes | None
    time: ClusterTime | None
    """Cluster time of the post-batch token, or the reply's ``operationTime``."""


def operation_time(reply: Any) -> ClusterTime | None:
    """The reply's ``operationTime``, else its gossiped ``$clusterTime``."""
    ts = reply.get("operationTime")
    if not isinstance(ts, Timestamp):
        gossip = reply.get("$clusterTime")
        ts = gossip.get("clusterTime") if gossip is not None else None
    return ClusterTime(ts.time, ts.inc) if isinstance(ts, Timestamp) else None


MAJORITY_PROBE_ID = "\x00mongo2pg-read-label"
"""An ``_id`` no collection uses: the point lookup of a majority read costs nothing."""


def majority(after: ClusterTime | None) -> dict[str, Any]:
    """Read concern ``majority``, at or after ``after`` when given: a server (even a new
    primary whose majority point lags after an election) answers from a snapshot that
    holds every write up to ``after``."""
    if after is None:
        return {"level": "majority"}
    return {"level": "majority", "afterClusterTime": after.to_bson()}


async def majority_time(client: AsyncMongoClient[Any], namespace: Namespace, *,
                        session: AsyncClientSession | None = None,
                        after: ClusterTime | None = None) -> ClusterTime | None:
    """The time of the server's majority-committed snapshot (at or after ``after``): the
    ``operationTime`` of a majority read, a point lookup of an ``_id`` no collection
    uses in ``namespace`` (which need not exist). A majority read reports its committed
    snapshot's time, where ``ping`` reports the last applied write, which an election
    may still roll back. ``None`` if the reply carries no ``operationTime``."""
    reply = await client[namespace.db].command(
        {"find": namespace.coll, "filter": {"_id": MAJORITY_PROBE_ID},
         "projection": {"_id": 1}, "limit": 1, "singleBatch": True,
         "readConcern": majority(after)},
        session=session)
    ts = reply.get("operationTime")
    if not isinstance(ts, Timestamp) and session is not None:
        ts = session.operation_time
    return ClusterTime(ts.time, ts.inc) if isinstance(ts, Timestamp) else None


def namespace_filter(patterns: Sequence[str], extra: Sequence[Namespace] = ()) -> dict[str, Any]:
    """``$match`` keeping events of the watched namespaces (``db.coll`` / ``db.*``)."""
    ors: list[dict[str, Any]] = [{"operationType": "invalidate"}]
    for pattern in patterns:
        db, _, coll = pattern.partition(".")
        if coll == "*":
            ors.append({"ns.db": db})
        else:
            ors.append({"ns.db": db, "ns.coll": coll})
            ors.append({"ns.db": db, "operationType": "dropDatabase"})
    for ns in extra:
        ors.append({"ns.db": ns.db, "ns.coll": ns.coll})
    return {"$match": {"$or": ors}}


def single_database(patterns: Sequence[str], extra: Sequence[Namespace] = ()) -> str | None:
    dbs = {p.partition(".")[0] for p in patterns} | {ns.db for ns in extra}
    return next(iter(dbs)) if len(dbs) == 1 else None


def raise_if_history_lost(exc: PyMongoError) -> None:
    """Raise the tailer's error for a change-stream command failure the code of which
    decides it: history lost (never retried) or a cursor someone ended (retried)."""
    if not isinstance(exc, OperationFailure):
        return
    code = exc.code or 0
    if code in HISTORY_LOST_CODES or code in POSITION_LOST_CODES:
        raise HistoryLostError(
            f"change stream cannot resume (code {code}); resync what may be missed"
        ) from exc
    if code in CURSOR_ENDED_CODES:
        raise SourceUnavailable(f"change stream cursor was ended (code {code})") from exc


class ChangeStreamCursor:
    """An open change stream: :meth:`open` once, then :meth:`next_batch` repeatedly."""

    def __init__(self, client: AsyncMongoClient[Any], *, patterns: Sequence[str],
                 extra_namespaces: Sequence[Namespace] = (), full_document: str,
                 split_large_events: bool, batch_size: int,
                 strip_bodies: bool = False, only_ddl: bool = False) -> None:
        self._client = client
        self._patterns = list(patterns)
        self._extra = list(extra_namespaces)
        self._full_document = full_document
        self.split_large_events = split_large_events
        self.batch_size = batch_size
        """Events asked for per reply; may change between ``getMore`` calls."""
        self._strip = strip_bodies
        self._only_ddl = only_ddl
        self._db = single_database(self._patterns, self._extra)
        self._session: AsyncClientSession | None = None
        self._cursor_id = 0
        self._collection = ""

    @property
    def alive(self) -> bool:
        """Whether the server still holds the cursor (an ``invalidate`` closes it)."""
        return self._session is not None and self._cursor_id != 0

    @property
    def database(self) -> str:
        return self._db or "admin"

    def pipeline(self, start: StartAt) -> list[dict[str, Any]]:
        spec: dict[str, Any] = {"fullDocument": self._full_document}
        if self._db is None:
            spec["allChangesForCluster"] = True
        if start.start_after is not None:
            spec["startAfter"] = RawBSONDocument(start.start_after)
        elif start.resume_after is not None:
            spec["resumeAfter"] = RawBSONDocument(start.resume_after)
        elif start.at_time is not None:
            spec["startAtOperationTime"] = start.at_time.to_bson()
        stages: list[dict[str, Any]] = [
            {"$changeStream": spec}, namespace_filter(self._patterns, self._extra)
        ]
        if self._only_ddl:
            stages.append({"$match": {"operationType": {"$in": [
                "drop", "rename", "dropDatabase", "invalidate"]}}})
        if self._strip:
            # Reading past an event too large to return: keep only its envelope.
            stages.append({"$project": {"fullDocument": 0, "updateDescription": 0,
                                        "fullDocumentBeforeChange": 0}})
        if self.split_large_events:
            stages.append({"$changeStreamSplitLargeEvent": {}})
        return stages

    async def open(self, start: StartAt) -> Reply:
        """Run the ``aggregate``; its first batch is returned like a ``getMore``'s."""
        self._session = self._client.start_session(causal_consistency=False)
        cmd = SON([("aggregate", 1), ("pipeline", self.pipeline(start)),
                   ("cursor", {"batchSize": self.batch_size})])
        try:
            reply = await self._client[self.database].command(
                cmd, session=self._session, codec_options=RAW)
        except PyMongoError as exc:
            await self.close()
            raise_if_history_lost(exc)
            raise
        cursor = read_cursor_reply(bytes(reply.raw))
        self._cursor_id = cursor.cursor_id
        self._collection = (cursor.ns or "").partition(".")[2]
        return self._reply(reply, cursor)

    async def next_batch(self, max_await_ms: int) -> Reply:
        if self._session is None:
            raise RuntimeError("cursor is not open")
        cmd = SON([("getMore", Int64(self._cursor_id)), ("collection", self._collection),
                   ("batchSize", self.batch_size), ("maxTimeMS", max(1, max_await_ms))])
        try:
            reply = await self._client[self.database].command(
                cmd, session=self._session, codec_options=RAW)
        except PyMongoError as exc:
            raise_if_history_lost(exc)
            raise
        cursor = read_cursor_reply(bytes(reply.raw))
        self._cursor_id = cursor.cursor_id
        return self._reply(reply, cursor)

    def _reply(self, reply: Any, cursor: CursorReply) -> Reply:
        token = cursor.post_batch_token
        when = token_cluster_time(token) if token is not None else None
        op_time = cursor.operation_time
        if op_time is None:  # no operationTime: the gossiped $clusterTime
            op_time = operation_time(reply)
        if when is None or (op_time is not None and when > op_time):
            when = op_time
        return Reply(cursor.docs, token, when)

    async def close(self) -> None:
        """Kill the server cursor (best effort) and end the session."""
        session, self._session = self._session, None
        cursor_id, self._cursor_id = self._cursor_id, 0
        if session is None:
            return
        try:
            if cursor_id:
                await self._client[self.database].command(
                    SON([("killCursors", self._collection),
                         ("cursors", [Int64(cursor_id)])]), session=session)
        except PyMongoError:
            pass  # the server reaps it after its idle timeout
        finally:
            await session.end_session()
