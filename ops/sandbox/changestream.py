"""Change streams: ``aggregate`` with ``$changeStream`` and their ``getMore``.

A :class:`StreamCursor` is a read position in the oplog (the sequence number of the
next entry to look at) plus the stream's scope — one collection, one database
(``aggregate: 1``), or the deployment (``allChangesForCluster`` on ``admin``; database
and deployment streams skip ``admin``, ``local``, ``config`` and ``system.*``) — its
options and the stages that follow ``$changeStream``. The start point is
``resumeAfter``/``startAfter`` (after the token's position; ``startAfter`` may follow
an ``invalidate``, ``resumeAfter`` may not), ``startAtOperationTime`` (entries at or
after it) or the current cluster time; if the capped oplog has already dropped an
entry after the start point the stream fails with ChangeStreamHistoryLost (286), also
on a later ``getMore`` that fell behind.

Each batch scans entries in order. Leading ``$match`` stages that look only at the
envelope (operationType, ns; :mod:`ops.sandbox.envmatch`) are decided on the entry —
once per distinct namespace and operation — so filtered-out entries cost nothing; a
kept entry's event is assembled as raw BSON from parts cached on the entry
(:func:`ops.sandbox.events.build_raw`); any remaining user stages run on the decoded
event with mongomock's pipeline engine (an event whose ``_id`` a stage changed is a
fatal error, as on the server). Events over 16 MiB are split or rejected. Each batch
reports ``postBatchResumeToken``, empty or not: the point the scan
reached — the last returned event's token while a batch cut by ``batchSize`` or the
16 MiB limit leaves events or unscanned entries behind — and only once the scan
reached the end of the oplog a high-water token at the current cluster time. An empty
``getMore`` waits for the next oplog append for up to ``maxTimeMS`` (the driver's
``maxAwaitTimeMS``; 1 s by default) without polling. ``invalidate`` (collection
streams after drop/rename, database streams after dropDatabase) is the last event of
its cursor; a stream resumed from the token of the event that caused it starts with it.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from mongomock import aggregate as mm_aggregate

from ops.sandbox import events
from ops.sandbox.cursors import MAX_BATCH_BYTES, Cursor
from ops.sandbox.envmatch import Predicate, compile_match
from ops.sandbox.errors import CommandError
from ops.sandbox.events import EVENT, HIGH_WATER, INVALIDATE, Options, Token
from ops.sandbox.oplog import Entry, Position
from ops.sandbox.registry import Ctx, Reply
from ops.sandbox.state import Sandbox
from ops.sandbox.store import INTERNAL_DBS
from ops.sandbox.wire import CODEC

_process_pipeline: Any = mm_aggregate.process_pipeline
CODEC_RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
ALLOWED_STAGES = frozenset({"$match", "$project", "$addFields", "$set", "$unset",
                            "$replaceRoot", "$replaceWith", "$redact"})
SPLIT_STAGE = "$changeStreamSplitLargeEvent"
DEFAULT_AWAIT_SECONDS = 1.0


_LENGTH = struct.Struct("<i")
_INDEX_KEYS: list[bytes] = []


def _index_key(n: int) -> bytes:
    """Type byte (embedded document) and key of array element ``n``."""
    while len(_INDEX_KEYS) <= n:
        _INDEX_KEYS.append(b"\x03" + str(len(_INDEX_KEYS)).encode() + b"\x00")
    return _INDEX_KEYS[n]


@dataclass(frozen=True)
class Scope:
    db: str | None          # None: the whole deployment
    coll: str | None        # None: every collection of db

    def sees(self, entry: Entry) -> bool:
        if self.coll is not None:
            return entry.db == self.db and entry.coll == self.coll and entry.op != "dropDatabase"
        if entry.db in INTERNAL_DBS or (entry.coll or "").startswith("system."):
            return False
        return self.db is None or entry.db == self.db

    def invalidated_by(self, entry: Entry) -> bool:
        if self.coll is not None:
            return entry.op in ("drop", "rename")
        return self.db is not None and entry.op == "dropDatabase"


class StreamCursor(Cursor):
    def __init__(self, sb: Sandbox, ns: str, scope: Scope, opts: Options,
                 stages: list[dict[str, Any]], split: bool, next_seq: int,
                 after: Position, skip_fragments: tuple[Position, int] | None) -> None:
        self.sb, self.ns, self.scope, self.opts = sb, ns, scope, opts
        self.stages, self.split = stages, split
        # Leading envelope-only $match stages run on the oplog entry (ops.sandbox.envmatch)
        self.prefilters: list[Predicate] = []
        for stage in stages:
            pred = compile_match(stage)
            if pred is None:
                break
            self.prefilters.append(pred)
        self.rest = stages[len(self.prefilters):]
        self.verdicts: dict[tuple[str, str, str | None], bool] = {}
        self.next_seq = next_seq
        self.after = after                      # position scanned up to
        self.floor = after                      # never report entries at or before it
        self.skip_fragments = skip_fragments
        self.pending: deque[tuple[Token, bytes]] = deque()
        self.last_token: Token | None = None
        self.closing = False                    # invalidate queued: close after it

    # -- producing events ------------------------------------------------------------
    def _transform(self, raw: bytes, stages: list[dict[str, Any]]) -> bytes | None:
        if not stages:
            return raw
        decoded = bson.decode(raw, CODEC)
        try:
            out = list(_process_pipeline([decoded], None, stages, None))
        except Exception as exc:
            raise CommandError(getattr(exc, "code", None) or 2, str(exc)) from exc
        if not out:
            return None
        if out[0].get("_id") != decoded["_id"]:
            raise CommandError(280, "Encountered an event whose _id field, which contains the "
                                    "resume token, was modified by the pipeline")
        return bson.encode(out[0])

    def _stages_for(self, entry: Entry) -> list[dict[str, Any]] | None:
        """The stages still to run on ``entry``'s event; None if a prefilter drops it."""
        if not self.prefilters:
            return self.stages
        dropdb = entry.op == "dropDatabase"
        if entry.coll is None and not dropdb:
            return self.stages          # an event with ns.coll null: the general engine
        env = (entry.op, entry.db, None if dropdb else entry.coll)
        keep = self.verdicts.get(env)
        if keep is None:                # few distinct envelopes: decide each once
            keep = self.verdicts[env] = all(pred(env) for pred in self.prefilters)
        return self.rest if keep else None

    def _queue(self, raw: bytes, token: Token) -> None:
        if len(raw) <= events.MAX_EVENT:
            self.pending.append((token, raw))
            return
        if not self.split:
            raise CommandError(10334, f"BSONObjectTooLarge: change event of {len(raw)} bytes "
                                      "exceeds 16 MiB; add $changeStreamSplitLargeEvent")
        fragments = events.split(dict(RawBSONDocument(raw, CODEC_RAW).items()), token.pos)
        if self.skip_fragments is not None and self.skip_fragments[0] == token.pos:
            fragments = fragments[self.skip_fragments[1]:]
        self.pending.extend(fragments)

    def _scan_one(self) -> bool:
        """Turn the next oplog entry into pending events; False at the end."""
        oplog = self.sb.oplog
        if self.next_seq < oplog.base:
            raise CommandError(286, "ChangeStreamHistoryLost: the oplog no longer holds the "
                                    "entries this change stream needs")
        entry = oplog.get(self.next_seq)
        if entry is None:
            return False
        self.next_seq += 1
        if entry.pos <= self.floor:  # e.g. startAtOperationTime in the future
            return True
        self.after = entry.pos
        if not self.scope.sees(entry):
            return True
        if entry.op in events.EXPANDED_OPS and not self.opts.expanded:
            return True
        stages = self._stages_for(entry)
        if stages is not None:
            raw = self._transform(events.build_raw(entry, self.opts, self.sb.store), stages)
            if raw is not None:
                self._queue(raw, Token(entry.pos))
        if self.scope.invalidated_by(entry):
            self.pending.append((Token(entry.pos, 0, INVALIDATE),
                                 bson.encode(events.invalidate(entry))))
            self.closing = True
        return True

    def batch(self, size: int | None) -> list[Any]:
        return [RawBSONDocument(raw) for raw in self.batch_raw(size)]

    def batch_raw(self, size: int | None) -> list[bytes]:
        """The next batch's events as encoded documents."""
        out: list[bytes] = []
        nbytes = 0
        limit = size if size and size > 0 else None
        if size == 0:
            return out
        while limit is None or len(out) < limit:
            if not self.pending:
                if self.closing or not self._scan_one():
                    break
                continue
            token, raw = self.pending[0]
            if out and nbytes + len(raw) > MAX_BATCH_BYTES:
                break
            self.pending.popleft()
            out.append(raw)
            nbytes += len(raw)
            self.last_token = token
            if token.kind == INVALIDATE:
                self.exhausted = True
                break
        return out

    def post_batch_token(self) -> dict[str, str]:
        """The point this cursor has delivered up to, as a token to resume from.

        While returned events are still pending, or entries remain unscanned (the batch
        was cut by ``batchSize`` or the 16 MiB limit), that is the last event returned
        (or, when the scan passed entries that produced nothing since, the last entry
        scanned): resuming from it yields exactly what this cursor would return next.
        Only a scan that reached the end of the oplog may report a high-water mark at
        the current cluster time.
        """
        last = self.last_token
        if self.pending or (last is not None and last.kind == INVALIDATE):
            assert last is not None
            return last.doc()
        if self.next_seq < self.sb.oplog.next_seq:
            if last is not None and last.pos == self.after:
                return last.doc()
            return Token(self.after).doc()
        now = self.sb.operation_time()
        hw = (now.time, now.inc, HIGH_WATER)
        return Token(max(hw, self.after)).doc()

    def reply(self, ctx: Ctx, size: int | None, first: bool) -> Reply:
        docs = self.batch_raw(size)
        if self.exhausted:
            ctx.sb.cursors.pop(self.id, None)
        elif not self.id:
            self.id = ctx.sb.new_cursor_id()
            ctx.sb.cursors[self.id] = self
        # {firstBatch|nextBatch: [...], postBatchResumeToken, id, ns}, the event array
        # framed by hand around the events' bytes instead of re-encoded document by document
        items = b"".join([_index_key(n) + raw for n, raw in enumerate(docs)])
        name = b"firstBatch" if first else b"nextBatch"
        array = b"\x04" + name + b"\x00" + _LENGTH.pack(len(items) + 5) + items + b"\x00"
        rest = bson.encode({"postBatchResumeToken": self.post_batch_token(),
                            "id": Int64(0 if self.exhausted else self.id), "ns": self.ns})
        body = array + rest[4:-1]
        cursor = RawBSONDocument(_LENGTH.pack(len(body) + 5) + body + b"\x00")
        return {"cursor": cursor, "ok": 1.0}

    async def get_more(self, ctx: Ctx, size: Any) -> Reply:
        wanted = int(size) if size else None
        docs_ready = bool(self.pending) or self.sb.oplog.next_seq > self.next_seq
        if not docs_ready and not self.closing:
            wait = ctx.body.get("maxTimeMS")
            seconds = int(wait) / 1000 if wait else DEFAULT_AWAIT_SECONDS
            await self.sb.oplog.wait(self.next_seq, seconds)
        try:
            return self.reply(ctx, wanted, False)
        except CommandError:
            ctx.sb.cursors.pop(self.id, None)  # an error ends the cursor, as on the server
            raise


def _start(sb: Sandbox, spec: dict[str, Any]) -> tuple[int, Position,
                                                        tuple[Position, int] | None]:
    """(first sequence to scan, position before it, fragments to skip)."""
    oplog = sb.oplog
    chosen = [k for k in ("resumeAfter", "startAfter", "startAtOperationTime") if k in spec]
    if len(chosen) > 1:
        raise CommandError(40674, "Only one type of resume option is allowed, but multiple "
                                  "were found")
    skip = None
    if "resumeAfter" in spec or "startAfter" in spec:
        token = Token.parse(spec.get("resumeAfter", spec.get("startAfter")))
        if token.kind == INVALIDATE and "resumeAfter" in spec:
            raise CommandError(260, "Attempting to resume a change stream using 'resumeAfter' "
                                    "is not allowed from an invalidate notification")
        after = token.pos
        if token.fragment and token.kind == EVENT:
            # resume inside a split event: re-read the entry, skip fragments ≤ fragment
            after = (token.pos[0], token.pos[1], token.pos[2] - 1)
            skip = (token.pos, token.fragment)
        seq = oplog.seq_after(after)
    elif "startAtOperationTime" in spec:
        ts = spec["startAtOperationTime"]
        if not isinstance(ts, Timestamp):
            raise CommandError(14, "startAtOperationTime must be a Timestamp")
        after = (ts.time, ts.inc, -1)
        seq = oplog.seq_at_or_after((ts.time, ts.inc, 0))
    else:
        now = sb.operation_time()
        after = (now.time, now.inc, HIGH_WATER)
        seq = oplog.next_seq
    if oplog.history_lost(after):
        raise CommandError(286, "Resume of change stream was not possible, as the resume "
                                "point may no longer be in the oplog.")
    return seq, after, skip


def _queue_invalidate(cursor: StreamCursor, resume: Any) -> None:
    """Resuming right after a drop/rename/dropDatabase event: its invalidate comes next."""
    token = Token.parse(resume)
    if token.kind != EVENT:
        return
    entry = cursor.sb.oplog.get(cursor.next_seq - 1)
    scope = cursor.scope
    if entry is not None and entry.pos == token.pos and scope.sees(entry) \
            and scope.invalidated_by(entry):
        invalidate = Token(entry.pos, 0, INVALIDATE)
        cursor.pending.append((invalidate, bson.encode(events.invalidate(entry))))
        cursor.closing = True


def open_stream(ctx: Ctx, pipeline: list[dict[str, Any]]) -> Reply:
    spec = dict(pipeline[0]["$changeStream"] or {})
    target = ctx.body["aggregate"]
    cluster = bool(spec.get("allChangesForCluster"))
    if cluster:
        if ctx.db != "admin" or target != 1:
            raise CommandError(73, "allChangesForCluster needs aggregate: 1 on the admin db")
        scope, ns = Scope(None, None), "admin.$cmd.aggregate"
    elif target == 1:
        if ctx.db in INTERNAL_DBS:
            raise CommandError(73, f"$changeStream may not be opened on the internal "
                                   f"{ctx.db} database")
        scope, ns = Scope(ctx.db, None), f"{ctx.db}.$cmd.aggregate"
    else:
        if ctx.db in INTERNAL_DBS or str(target).startswith("system."):
            raise CommandError(73, f"$changeStream may not be opened on {ctx.db}.{target}")
        scope, ns = Scope(ctx.db, str(target)), f"{ctx.db}.{target}"
    stages = list(pipeline[1:])
    split = bool(stages) and SPLIT_STAGE in stages[-1]
    if split:
        stages = stages[:-1]
    for stage in stages:
        name = next(iter(stage), "")
        if name not in ALLOWED_STAGES:
            raise CommandError(
                20 if name != SPLIT_STAGE else 7182800,
                f"{name} is not permitted in a $changeStream pipeline" if name != SPLIT_STAGE
                else f"{SPLIT_STAGE} must be the last stage in the pipeline")
    opts = Options(full_document=str(spec.get("fullDocument", "default")),
                   before_change=str(spec.get("fullDocumentBeforeChange", "off")),
                   expanded=bool(spec.get("showExpandedEvents")))
    if opts.full_document not in ("default", "updateLookup", "whenAvailable", "required"):
        raise CommandError(2, f"unknown fullDocument mode {opts.full_document!r}")
    if opts.before_change not in ("off", "whenAvailable", "required"):
        raise CommandError(2, f"unknown fullDocumentBeforeChange mode {opts.before_change!r}")
    seq, after, skip = _start(ctx.sb, spec)
    cursor = StreamCursor(ctx.sb, ns, scope, opts, stages, split, seq, after, skip)
    if "resumeAfter" in spec or "startAfter" in spec:
        _queue_invalidate(cursor, spec.get("resumeAfter", spec.get("startAfter")))
    size = (ctx.body.get("cursor") or {}).get("batchSize")
    return cursor.reply(ctx, int(size) if size is not None else None, True)
