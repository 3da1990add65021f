"""Read commands: find, getMore, killCursors, count, distinct and aggregate.

``find`` with a filter that only bounds ``_id`` (or no filter), sorted by ``_id``
ascending or not at all, becomes a :class:`~ops.sandbox.cursors.ScanCursor` over
the ordered ``_id`` keys — the path the backfill's chunk reads take, served without
decoding documents. Other filters are still scanned in ``_id`` order with a decoded
predicate; other sorts are materialised. ``aggregate`` runs its stages through
mongomock's pipeline engine, except for the ones it lacks or gets wrong for us
(``$collStats``, ``$sample``, ``$bucketAuto``, and ``$sort``, which must follow BSON
order across types); ``$changeStream`` pipelines are handed
to :mod:`ops.sandbox.changestream`.
"""

from __future__ import annotations

import random
from typing import Any

import bson
from bson.int64 import Int64
from mongomock import aggregate as mm_aggregate

from ops.sandbox import engine
from ops.sandbox.bsonkey import sort_key
from ops.sandbox.cursors import DEFAULT_FIRST_BATCH, Cursor, ListCursor, ScanCursor
from ops.sandbox.errors import CommandError
from ops.sandbox.registry import Ctx, Reply, command
from ops.sandbox.store import Collection
from ops.sandbox.wire import CODEC

_process_pipeline: Any = mm_aggregate.process_pipeline


def cursor_reply(ctx: Ctx, cursor: Cursor, size: int | None, first: bool,
                 extra: dict[str, Any] | None = None) -> Reply:
    # batchSize 0 opens the cursor without returning documents
    docs = [] if size == 0 else cursor.batch(size)
    if cursor.exhausted:
        ctx.sb.cursors.pop(cursor.id, None)
        cursor_id = 0
    else:
        if not cursor.id:
            cursor.id = ctx.sb.new_cursor_id()
            ctx.sb.cursors[cursor.id] = cursor
        cursor_id = cursor.id
    body: dict[str, Any] = {"firstBatch" if first else "nextBatch": docs}
    if extra:
        body.update(extra)
    body["id"] = Int64(cursor_id)
    body["ns"] = cursor.ns
    return {"cursor": body, "ok": 1.0}


def first_batch_size(body: dict[str, Any]) -> int | None:
    spec = body.get("cursor") or {}
    size = body.get("batchSize", spec.get("batchSize"))
    return DEFAULT_FIRST_BATCH if size is None else int(size)


def _docs(coll: Collection | None, spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Decoded documents of ``coll`` matching ``spec``, in ``_id`` order."""
    if coll is None:
        return []
    bounds = engine.id_range(spec)
    if bounds is not None:
        cursor = ScanCursor(coll, *bounds)
        return [bson.decode(d.raw, CODEC) for d in cursor.batch(None) + _rest(cursor)]
    pred = engine.matcher(spec)
    docs = [bson.decode(raw, CODEC) for raw in coll.iter_raw()]
    return [d for d in docs if pred is None or pred(d)]


def _rest(cursor: Cursor) -> list[Any]:
    out: list[Any] = []
    while not cursor.exhausted:
        out += cursor.batch(None)
    return out


@command("find")
def find(ctx: Ctx) -> Reply:
    body = ctx.body
    coll = ctx.collection()
    spec = body.get("filter") or {}
    sort = body.get("sort") or {}
    projection = body.get("projection")
    skip = int(body.get("skip") or 0)
    limit = int(body.get("limit") or 0)
    single = bool(body.get("singleBatch")) or limit < 0
    limit = abs(limit)
    size = first_batch_size(body)
    if limit and (size is None or size == 0 or size > limit):
        size = limit
    cursor: Cursor
    bounds = engine.id_range(spec)
    if coll is None:
        cursor = ListCursor(ctx.ns, [])
    elif not sort or list(sort.items()) == [("_id", 1)]:
        if bounds is not None:
            cursor = ScanCursor(coll, *bounds, projection=projection, skip=skip, limit=limit)
        else:
            cursor = ScanCursor(coll, None, True, None, True, engine.matcher(spec),
                                projection, skip, limit)
    elif list(sort.items()) == [("_id", -1)] and not spec and limit:
        # The last documents by _id (e.g. the highest _id): read from the end of the
        # key list instead of decoding and sorting the whole collection.
        keys = coll.keys
        picked = keys[max(0, len(keys) - skip - limit):max(0, len(keys) - skip)][::-1]
        cursor = ListCursor(ctx.ns, [engine.project(bson.decode(coll.docs[k], CODEC),
                                                    projection) for k in picked])
    else:
        docs = engine.sort_docs(_docs(coll, spec), sort)
        docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        cursor = ListCursor(ctx.ns, [engine.project(d, projection) for d in docs])
    reply = cursor_reply(ctx, cursor, size, True)
    if single and reply["cursor"]["id"]:
        ctx.sb.cursors.pop(int(reply["cursor"]["id"]), None)
        reply["cursor"]["id"] = Int64(0)
    return reply


@command("getMore")
def get_more(ctx: Ctx) -> Any:
    cursor_id = int(ctx.body["getMore"])
    cursor = ctx.sb.cursors.get(cursor_id)
    if cursor is None:
        raise CommandError(43, f"cursor id {cursor_id} not found")
    if cursor.killed is not None:
        ctx.sb.cursors.pop(cursor_id, None)
        raise CommandError(175, f"query plan killed :: caused by :: {cursor.killed}")
    size = ctx.body.get("batchSize")
    from ops.sandbox.changestream import StreamCursor

    if isinstance(cursor, StreamCursor):
        return cursor.get_more(ctx, size)
    return cursor_reply(ctx, cursor, int(size) if size else None, False)


@command("killCursors")
def kill_cursors(ctx: Ctx) -> Reply:
    killed, missing = [], []
    for cursor_id in ctx.body.get("cursors") or []:
        if ctx.sb.cursors.pop(int(cursor_id), None) is None:
            missing.append(cursor_id)
        else:
            killed.append(cursor_id)
    return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
            "cursorsUnknown": [], "ok": 1.0}


@command("count")
def count(ctx: Ctx) -> Reply:
    coll = ctx.collection()
    spec = ctx.body.get("query") or {}
    if coll is None:
        n = 0
    elif not spec:
        n = len(coll.docs)
    else:
        n = len(_docs(coll, spec))
    n = max(0, n - int(ctx.body.get("skip") or 0))
    limit = abs(int(ctx.body.get("limit") or 0))
    if limit:
        n = min(n, limit)
    return {"n": n, "ok": 1.0}


@command("distinct")
def distinct(ctx: Ctx) -> Reply:
    key = ctx.body["key"]
    seen: dict[Any, Any] = {}
    for doc in _docs(ctx.collection(), ctx.body.get("query")):
        value = engine._resolve(doc, key)
        for v in value if isinstance(value, list) else [value]:
            if v is not None or key.split(".")[0] in doc:
                seen.setdefault(sort_key(v), v)
    return {"values": [seen[k] for k in sorted(seen)], "ok": 1.0}


def coll_stats(coll: Collection | None, ns: str) -> dict[str, Any]:
    count_ = len(coll.docs) if coll else 0
    size = coll.data_size if coll else 0
    return {"ns": ns, "count": count_, "size": size,
            "avgObjSize": (size // count_) if count_ else 0, "storageSize": size,
            "nindexes": len(coll.indexes) if coll else 0, "totalIndexSize": 0}


def _bucket_auto(docs: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    group_by = spec["groupBy"]
    if not isinstance(group_by, str) or not group_by.startswith("$"):
        raise CommandError(40239, "$bucketAuto groupBy must be a field path in the sandbox")
    n = int(spec["buckets"])
    values = sorted((engine._resolve(d, group_by[1:]) for d in docs), key=sort_key)
    out: list[dict[str, Any]] = []
    if not values or n <= 0:
        return out
    per = max(1, -(-len(values) // n))
    i = 0
    while i < len(values):
        j = min(len(values), i + per)
        # equal values never straddle two buckets
        while j < len(values) and sort_key(values[j]) == sort_key(values[j - 1]):
            j += 1
        upper = values[j] if j < len(values) else values[-1]
        out.append({"_id": {"min": values[i], "max": upper}, "count": j - i})
        i = j
    return out


def run_pipeline(ctx: Ctx, coll: Collection | None, pipeline: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    stages = list(pipeline)
    docs: list[dict[str, Any]] | None = None
    if stages and "$collStats" in stages[0]:
        stats = coll_stats(coll, ctx.ns)
        spec = stages.pop(0)["$collStats"]
        out: dict[str, Any] = {"ns": ctx.ns, "host": ctx.sb.address}
        if "storageStats" in spec:
            out["storageStats"] = stats
        if "count" in spec:
            out["count"] = stats["count"]
        docs = [out]
    elif stages and "$match" in stages[0]:
        docs = _docs(coll, stages.pop(0)["$match"])
    elif stages and "$sample" in stages[0] and coll is not None:
        # A leading $sample decodes only the documents it draws (MongoDB's random
        # cursor), not the whole collection.
        size = int(stages.pop(0)["$sample"]["size"])
        picked = random.sample(coll.keys, min(size, len(coll.keys)))
        docs = [bson.decode(coll.docs[k], CODEC) for k in picked]
    else:
        docs = _docs(coll, None)
    pending: list[dict[str, Any]] = []
    for stage in [*stages, {"$end": None}]:
        name = next(iter(stage))
        if name in ("$sample", "$bucketAuto", "$sort", "$end", "$out", "$merge"):
            if pending:
                try:
                    docs = list(_process_pipeline(docs, None, pending, None))
                except Exception as exc:
                    raise CommandError(getattr(exc, "code", None) or 2, str(exc)) from exc
                pending = []
            if name == "$sample":
                size = int(stage[name]["size"])
                docs = random.sample(docs, min(size, len(docs)))
            elif name == "$bucketAuto":
                docs = _bucket_auto(docs, stage[name])
            elif name == "$sort":
                docs = engine.sort_docs(docs, stage[name])
            elif name in ("$out", "$merge"):
                raise CommandError(20, f"{name} is not supported by the sandbox")
        else:
            pending.append(stage)
    return docs


@command("aggregate")
def aggregate(ctx: Ctx) -> Any:
    pipeline = ctx.body.get("pipeline") or []
    if pipeline and "$changeStream" in pipeline[0]:
        from ops.sandbox.changestream import open_stream

        return open_stream(ctx, pipeline)
    if "cursor" not in ctx.body and not ctx.body.get("explain"):
        raise CommandError(9, "The 'cursor' option is required")
    target = ctx.body["aggregate"]
    coll = ctx.collection() if isinstance(target, str) else None
    ns = ctx.ns if isinstance(target, str) else f"{ctx.db}.$cmd.aggregate"
    docs = run_pipeline(ctx, coll, pipeline)
    return cursor_reply(ctx, ListCursor(ns, docs), first_batch_size(ctx.body), True)
