"""Collections, databases and indexes: create, collMod, drop, dropDatabase,
renameCollection, createIndexes/listIndexes/dropIndexes, listCollections.

Every change of this kind is an oplog entry, so change streams report it: ``drop``,
``rename`` and ``dropDatabase`` always (a collection stream is then invalidated, a
database stream after ``dropDatabase``), and ``create``, ``createIndexes``,
``dropIndexes`` and ``modify`` to streams opened with ``showExpandedEvents``.
``create`` and ``collMod`` accept ``changeStreamPreAndPostImages: {enabled: bool}``;
other collection options are stored and echoed by ``listCollections`` unchecked.
Index definitions are recorded but only ``_id`` is enforced.
"""

from __future__ import annotations

from typing import Any

from ops.sandbox.cmd_read import cursor_reply, first_batch_size
from ops.sandbox.cursors import ListCursor
from ops.sandbox.engine import matcher
from ops.sandbox.errors import CommandError
from ops.sandbox.registry import Ctx, Reply, command
from ops.sandbox.state import Sandbox, check_ns, create_collection
from ops.sandbox.store import Collection

_OPTION_KEYS = ("writeConcern", "lsid", "txnNumber", "$db", "$clusterTime", "$readPreference",
                "autocommit", "startTransaction", "comment", "apiVersion", "apiStrict",
                "apiDeprecationErrors", "maxTimeMS")


@command("create", write=True)
def create(ctx: Ctx) -> Reply:
    name = ctx.coll_name
    if ctx.sb.store.get(ctx.db, name) is not None:
        raise CommandError(48, f"Collection {ctx.ns} already exists.")
    options = {k: v for k, v in ctx.body.items() if k != "create" and k not in _OPTION_KEYS}
    create_collection(ctx.sb, ctx.db, name, options)
    return {"ok": 1.0}


@command("collMod", write=True)
def coll_mod(ctx: Ctx) -> Reply:
    coll = ctx.sb.store.get(ctx.db, ctx.coll_name)
    if coll is None:
        raise CommandError(26, f"ns does not exist: {ctx.ns}")
    before = dict(coll.options)
    changes = {k: v for k, v in ctx.body.items() if k != "collMod" and k not in _OPTION_KEYS}
    coll.options.update(changes)
    ctx.sb.ddl_event("modify", ctx.db, coll.name, uuid=coll.uuid, extra={
        "operationDescription": changes,
        "stateBeforeChange": {"collectionOptions": {"uuid": coll.uuid, **before}}})
    return {"ok": 1.0}


def kill_reads(sb: Sandbox, ns: str, reason: str) -> None:
    """Mark the open query cursors of collection ``ns`` killed: renameCollection and drop
    invalidate them, interrupting queries that are still returning data (change streams
    learn of the DDL from their events instead)."""
    from ops.sandbox.changestream import StreamCursor

    for cursor in sb.cursors.values():
        if cursor.ns == ns and not isinstance(cursor, StreamCursor):
            cursor.killed = reason


def drop_collection(sb: Sandbox, coll: Collection) -> None:
    kill_reads(sb, coll.ns, f"collection dropped: {coll.ns}")
    sb.store.drop(coll.db, coll.name)
    sb.ddl_event("drop", coll.db, coll.name, uuid=coll.uuid)


@command("drop", write=True)
def drop(ctx: Ctx) -> Reply:
    coll = ctx.sb.store.get(ctx.db, ctx.coll_name)
    if coll is None:
        return {"ok": 1.0}
    n = len(coll.indexes)
    drop_collection(ctx.sb, coll)
    return {"nIndexesWas": n, "ns": ctx.ns, "ok": 1.0}


@command("dropDatabase", write=True)
def drop_database(ctx: Ctx) -> Reply:
    colls = list(ctx.sb.store.dbs.get(ctx.db, {}).values())
    for coll in colls:
        drop_collection(ctx.sb, coll)
    if colls:
        ctx.sb.ddl_event("dropDatabase", ctx.db, None)
    return {"dropped": ctx.db, "ok": 1.0}


@command("renameCollection", write=True)
def rename_collection(ctx: Ctx) -> Reply:
    source, target = str(ctx.body["renameCollection"]), str(ctx.body.get("to", ""))
    sdb, _, sname = source.partition(".")
    tdb, _, tname = target.partition(".")
    check_ns(tdb, tname)
    sb = ctx.sb
    coll = sb.store.get(sdb, sname)
    if coll is None:
        raise CommandError(26, f"Source collection {source} does not exist")
    existing = sb.store.get(tdb, tname)
    if existing is not None:
        if not ctx.body.get("dropTarget"):
            raise CommandError(48, f"target namespace exists: {target}")
        drop_collection(sb, existing)
    kill_reads(sb, coll.ns, f"collection renamed from '{source}' to '{target}'")
    sb.store.drop(sdb, sname)
    coll.db, coll.name = tdb, tname
    sb.store.attach(coll)
    sb.ddl_event("rename", sdb, sname, uuid=coll.uuid, extra={
        "to": {"db": tdb, "coll": tname},
        "operationDescription": {"to": {"db": tdb, "coll": tname}}})
    return {"ok": 1.0}


@command("createIndexes", write=True)
def create_indexes(ctx: Ctx) -> Reply:
    existed = ctx.sb.store.get(ctx.db, ctx.coll_name) is not None
    coll = ctx.collection(create=True)
    assert coll is not None
    before = len(coll.indexes)
    added = []
    for spec in ctx.body.get("indexes") or []:
        if "key" not in spec or "name" not in spec:
            raise CommandError(9, "index specification needs 'key' and 'name'")
        current = coll.indexes.get(spec["name"])
        if current is not None:
            if dict(current["key"]) != dict(spec["key"]):
                raise CommandError(86, f"Index with name: {spec['name']} already exists "
                                       "with a different key")
            continue
        index = {"v": 2, **spec}
        coll.indexes[spec["name"]] = index
        added.append(index)
    if added:
        ctx.sb.ddl_event("createIndexes", ctx.db, coll.name, uuid=coll.uuid,
                         extra={"operationDescription": {"indexes": added}})
    return {"numIndexesBefore": before, "numIndexesAfter": len(coll.indexes),
            "createdCollectionAutomatically": not existed, "ok": 1.0}


@command("listIndexes")
def list_indexes(ctx: Ctx) -> Reply:
    coll = ctx.collection()
    if coll is None:
        raise CommandError(26, f"ns does not exist: {ctx.ns}")
    cursor = ListCursor(ctx.ns, [dict(i) for i in coll.indexes.values()])
    return cursor_reply(ctx, cursor, first_batch_size(ctx.body), True)


@command("dropIndexes", "deleteIndexes", write=True)
def drop_indexes(ctx: Ctx) -> Reply:
    coll = ctx.sb.store.get(ctx.db, ctx.coll_name)
    if coll is None:
        raise CommandError(26, f"ns not found {ctx.ns}")
    which: Any = ctx.body.get("index")
    before = len(coll.indexes)
    if which == "*":
        names = [n for n in coll.indexes if n != "_id_"]
    elif isinstance(which, str):
        names = [which]
    elif isinstance(which, list):
        names = list(which)
    else:
        names = [n for n, i in coll.indexes.items() if dict(i["key"]) == dict(which)]
        if not names:
            raise CommandError(27, f"can't find index with key: {which}")
    dropped = []
    for name in names:
        if name == "_id_":
            raise CommandError(72, "cannot drop _id index")
        if name not in coll.indexes:
            raise CommandError(27, f"index not found with name [{name}]")
        dropped.append(coll.indexes.pop(name))
    if dropped:
        ctx.sb.ddl_event("dropIndexes", ctx.db, coll.name, uuid=coll.uuid,
                         extra={"operationDescription": {"indexes": dropped}})
    return {"nIndexesWas": before, "ok": 1.0}


@command("listCollections")
def list_collections(ctx: Ctx) -> Reply:
    infos = [c.info() for _, c in sorted(ctx.sb.store.dbs.get(ctx.db, {}).items())]
    pred = matcher(ctx.body.get("filter"))
    infos = [i for i in infos if pred is None or pred(i)]
    if ctx.body.get("nameOnly"):
        infos = [{"name": i["name"], "type": i["type"]} for i in infos]
    cursor = ListCursor(f"{ctx.db}.$cmd.listCollections", infos)
    return cursor_reply(ctx, cursor, first_batch_size(ctx.body), True)
