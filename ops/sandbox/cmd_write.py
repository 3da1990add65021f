"""Document writes: insert, update, delete, findAndModify.

Each changed document is written back as fresh BSON bytes and reported to the
command's :class:`~ops.sandbox.state.Writer`, which commits it with its own cluster
time (or buffers it in the transaction). An update written with operators or a
pipeline is recorded as ``update`` with an ``updateDescription`` computed from the real
before/after documents; a replacement document as ``replace``; an upsert that inserts
as ``insert``. An update that leaves the bytes unchanged writes nothing, as on a real
server. Per-statement failures (duplicate ``_id`` → 11000, changing ``_id`` → 66) are
reported in ``writeErrors`` and stop an ordered batch.
"""

from __future__ import annotations

from typing import Any

import bson

from ops.sandbox import engine
from ops.sandbox.bsonkey import SortKey, sort_key
from ops.sandbox.errors import CommandError
from ops.sandbox.registry import Ctx, Reply, command
from ops.sandbox.state import Writer
from ops.sandbox.store import Collection, ensure_id_first
from ops.sandbox.wire import CODEC

Match = tuple[SortKey, bytes, dict[str, Any]]


def matches(coll: Collection | None, spec: dict[str, Any] | None,
            limit: int = 0) -> list[Match]:
    """Up to ``limit`` (0: all) documents matching ``spec``, in ``_id`` order."""
    out: list[Match] = []
    if coll is None:
        return out
    bounds = engine.id_range(spec)
    pred = None if bounds is not None else engine.matcher(spec)
    low, low_inc, high, high_inc = bounds or (None, True, None, True)
    keys = coll.keys
    for i in range(coll.position(low, low_inc) if low is not None else 0, len(keys)):
        key = keys[i]
        if high is not None and (key > high or (not high_inc and key == high)):
            break
        raw = coll.docs.get(key)
        if raw is None:
            continue
        doc = bson.decode(raw, CODEC)
        if pred is None or pred(doc):
            out.append((key, raw, doc))
            if len(out) == limit:
                break
    return out


def _dup(ns: str, id_value: Any) -> CommandError:
    return CommandError(11000, f"E11000 duplicate key error collection: {ns} index: _id_ "
                               f"dup key: {{ _id: {id_value!r} }}")


def _write_error(index: int, exc: CommandError, id_value: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"index": index, "code": exc.code, "errmsg": str(exc)}
    if exc.code == 11000:
        err["keyPattern"] = {"_id": 1}
        err["keyValue"] = {"_id": id_value}
    return err


def insert_one(writer: Writer, coll: Collection, raw: bytes) -> None:
    raw, doc = ensure_id_first(raw)
    id_value = doc["_id"]
    if isinstance(id_value, list):
        raise CommandError(53, "The '_id' value cannot be of type array")
    key = sort_key(id_value)
    if key in coll.docs:
        err = _dup(coll.ns, id_value)
        err.labels = []
        err.id_value = id_value  # type: ignore[attr-defined]
        raise err
    coll.put(key, raw)
    writer.record(coll, "insert", key, id_value, None, raw)


@command("insert", write=True)
def insert(ctx: Ctx) -> Reply:
    docs = ctx.sequences.get("documents")
    if docs is None:
        docs = [bson.encode(d) for d in ctx.body.get("documents") or []]
    ordered = ctx.body.get("ordered", True)
    coll = ctx.collection(create=True)
    assert coll is not None
    writer = ctx.writer
    n, errors = 0, []
    for index, raw in enumerate(docs):
        try:
            insert_one(writer, coll, raw)
            n += 1
        except CommandError as exc:
            errors.append(_write_error(index, exc, getattr(exc, "id_value", None)))
            if ordered:
                break
    reply: Reply = {"n": n, "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return reply


def _new_version(doc: dict[str, Any], raw: bytes, spec: dict[str, Any], update: Any,
                 array_filters: list[dict[str, Any]] | None) -> dict[str, Any]:
    if engine.is_replacement(update):
        if "_id" in update and sort_key(update["_id"]) != sort_key(doc["_id"]):
            raise CommandError(66, "the (immutable) field '_id' was found to have been altered")
        return {"_id": doc["_id"], **{k: v for k, v in update.items() if k != "_id"}}
    # ``doc`` was decoded from ``raw``: decoding again is a cheap private copy.
    return engine.apply_update(doc, spec, update, array_filters,
                               fresh=bson.decode(raw, CODEC))


def update_doc(writer: Writer, coll: Collection, match: Match, spec: dict[str, Any],
               update: Any, array_filters: list[dict[str, Any]] | None) -> tuple[bool, bytes]:
    """Apply ``update`` to one matched document; (modified?, bytes after)."""
    key, raw, doc = match
    new = _new_version(doc, raw, spec, update, array_filters)
    new_raw = bson.encode(new)
    if new_raw == raw:
        return False, raw
    coll.put(key, new_raw)
    if engine.is_replacement(update):
        writer.record(coll, "replace", key, doc["_id"], raw, new_raw)
    else:
        writer.record(coll, "update", key, doc["_id"], raw, new_raw,
                      engine.diff(doc, new, raw, new_raw))
    return True, new_raw


def upsert_doc(writer: Writer, coll: Collection, spec: dict[str, Any], update: Any,
               array_filters: list[dict[str, Any]] | None) -> tuple[Any, bytes]:
    seed = engine.upsert_seed(spec, update)
    if engine.is_replacement(update):
        new = {"_id": seed["_id"], **{k: v for k, v in update.items() if k != "_id"}}
    else:
        new = engine.apply_update(seed, spec, update, array_filters, inserting=True)
    raw = bson.encode(new)
    insert_one(writer, coll, raw)
    return new["_id"], raw


@command("update", write=True)
def update(ctx: Ctx) -> Reply:
    statements = ctx.sequences.get("updates")
    specs = ([bson.decode(s, CODEC) for s in statements] if statements is not None
             else list(ctx.body.get("updates") or []))
    ordered = ctx.body.get("ordered", True)
    coll = ctx.collection(create=True)
    assert coll is not None
    writer = ctx.writer
    n = modified = 0
    upserted: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, st in enumerate(specs):
        q, u = st.get("q") or {}, st.get("u")
        if st.get("multi") and engine.is_replacement(u):
            errors.append(_write_error(index, CommandError(9, "multi update is not supported "
                                                               "for replacement-style update")))
            if ordered:
                break
            continue
        try:
            found = 0
            for match in matches(coll, q, 0 if st.get("multi") else 1):
                found += 1
                changed, _ = update_doc(writer, coll, match, q, u, st.get("arrayFilters"))
                modified += changed
                if not st.get("multi"):
                    break
            n += found
            if not found and st.get("upsert"):
                id_value, _ = upsert_doc(writer, coll, q, u, st.get("arrayFilters"))
                upserted.append({"index": index, "_id": id_value})
                n += 1
        except CommandError as exc:
            errors.append(_write_error(index, exc, getattr(exc, "id_value", None)))
            if ordered:
                break
    reply: Reply = {"n": n, "nModified": modified, "ok": 1.0}
    if upserted:
        reply["upserted"] = upserted
    if errors:
        reply["writeErrors"] = errors
    return reply


def delete_doc(writer: Writer, coll: Collection, match: Match) -> None:
    key, raw, doc = match
    coll.remove(key)
    writer.record(coll, "delete", key, doc["_id"], raw, None)


@command("delete", write=True)
def delete(ctx: Ctx) -> Reply:
    statements = ctx.sequences.get("deletes")
    specs = ([bson.decode(s, CODEC) for s in statements] if statements is not None
             else list(ctx.body.get("deletes") or []))
    coll = ctx.collection()
    writer = ctx.writer
    n = 0
    for st in specs:
        found = matches(coll, st.get("q") or {}, 1 if st.get("limit") else 0)
        if st.get("limit"):
            found = found[:1]
        if coll is None or not found:
            continue
        for key, _, _ in found:
            coll.remove(key)
        # A multi-delete is logged in batches sharing cluster times, as MongoDB 6.1+ does.
        writer.record_deletes(coll, [(key, doc["_id"], raw) for key, raw, doc in found])
        n += len(found)
    return {"n": n, "ok": 1.0}


@command("findAndModify", "findandmodify", write=True)
def find_and_modify(ctx: Ctx) -> Reply:
    body = ctx.body
    q = body.get("query") or {}
    coll = ctx.collection(create=not body.get("remove"))
    found = matches(coll, q, 0 if body.get("sort") else 1)
    if body.get("sort"):
        docs = engine.sort_docs([m[2] for m in found], body["sort"])
        by_key = {sort_key(m[2]["_id"]): m for m in found}
        found = [by_key[sort_key(d["_id"])] for d in docs]
    match = found[0] if found else None
    writer = ctx.writer
    last: dict[str, Any] = {"n": 0}
    value: Any = None
    fields = body.get("fields")
    if body.get("remove"):
        if match is not None and coll is not None:
            delete_doc(writer, coll, match)
            last["n"] = 1
            value = match[2]
    else:
        assert coll is not None
        u = body.get("update")
        if u is None:
            raise CommandError(9, "Either an update or remove=true must be specified")
        if match is not None:
            _, new_raw = update_doc(writer, coll, match, q, u, body.get("arrayFilters"))
            last.update(n=1, updatedExisting=True)
            value = bson.decode(new_raw, CODEC) if body.get("new") else match[2]
        elif body.get("upsert"):
            id_value, raw = upsert_doc(writer, coll, q, u, body.get("arrayFilters"))
            last.update(n=1, updatedExisting=False, upserted=id_value)
            value = bson.decode(raw, CODEC) if body.get("new") else None
        else:
            last["updatedExisting"] = False
    if value is not None and fields:
        value = engine.project(value, fields)
    return {"lastErrorObject": last, "value": value, "ok": 1.0}
