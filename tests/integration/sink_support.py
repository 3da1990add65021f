"""Shared helpers of the sink's integration tests: changes, batches, reading the target."""

from __future__ import annotations

from typing import Any

import bson
import msgspec
import psycopg
from psycopg import sql

from cdc.batch import Batch, Change, Op, Origin
from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve
from cdc.mapping.model import ReversibleMapper, TableShape
from cdc.sink import Sink
from cdc.sink.sink import Staged
from cdc.types import Namespace

CONTROL = "m2p_ctl"
MAPPING = MappingConfig()
NS = Namespace("shop", "orders")


# Column mode for NS: a typed column, and line items in a child table.
COLUMN_MAPPING = MappingConfig(rules=(MappingRule(
    namespace=str(NS), mode="column", columns=(ColumnRule("c", "text"),),
    children=(ChildRule("items", "orders_items", columns=(ColumnRule("n", "bigint"),)),),
),))


def mapper_for(ns: Namespace) -> ReversibleMapper:
    """The production mapping of ``ns`` (document mode by default)."""
    return resolve(MAPPING, ns)


def column_mapper_for(ns: Namespace) -> ReversibleMapper:
    return resolve(COLUMN_MAPPING, ns)


def documents(dsn: str, mapper: ReversibleMapper) -> dict[bytes, tuple[dict[str, Any], int]]:
    """``{_key: (document, version)}`` read back through the mapping from every table;
    fails if a child row has no parent or carries another version than its parent."""
    root, *children = mapper.tables()
    with psycopg.connect(dsn) as conn:
        conn.adapters.register_loader("jsonb", psycopg.types.string.TextLoader)

        def read(shape: TableShape) -> list[tuple[Any, ...]]:
            cols = [c.name for c in shape.columns] + ["_m2p_version"]
            return conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.Identifier(shape.schema, shape.name),
                sql.SQL(", ").join(map(sql.Identifier, shape.key_columns)))).fetchall()

        roots = {bytes(r[0]): r for r in read(root)}
        per_doc: dict[bytes, dict[str, list[tuple[Any, ...]]]] = {
            k: {root.name: [r[:-1]]} for k, r in roots.items()}
        for child in children:
            for r in read(child):
                parent = roots.get(bytes(r[0]))
                assert parent is not None, f"orphan row in {child.name}"
                assert r[-1] == parent[-1], f"{child.name} row of another version"
                per_doc[bytes(r[0])].setdefault(child.name, []).append(r[:-1])
    return {k: (mapper.to_document(rows), roots[k][-1]) for k, rows in per_doc.items()}


def id_bson(i: Any) -> bytes:
    return bson.encode({"_id": i})


def upsert(i: Any, version: int, body: dict[str, Any] | None = None, *,
           origin: Origin = Origin.STREAM, ns: Namespace = NS) -> Change:
    doc = {"_id": i, **(body or {"v": version})}
    return Change(ns, id_bson(i), version, Op.UPSERT, bson.encode(doc), origin)


def delete(i: Any, version: int, *, origin: Origin = Origin.STREAM,
           ns: Namespace = NS) -> Change:
    return Change(ns, id_bson(i), version, Op.DELETE, None, origin)


def key_of(i: Any, ns: Namespace = NS) -> bytes:
    return mapper_for(ns).map_key(id_bson(i))


def rows(dsn: str, ns: Namespace = NS) -> dict[bytes, tuple[dict[str, Any], int]]:
    """``{_key: (document, _m2p_version)}`` of the namespace's table."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql.SQL("SELECT _key, doc, _m2p_version FROM {}").format(
            sql.Identifier(ns.db, ns.coll)))
        return {bytes(k): (doc, v) for k, doc, v in cur.fetchall()}


def tombstones(dsn: str, ns: Namespace = NS) -> dict[bytes, int]:
    """``{_key: version}`` of the namespace's tombstones."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            sql.SQL("SELECT key, version FROM {}.tombstones WHERE table_name = %s").format(
                sql.Identifier(CONTROL)), (f"{ns.db}.{ns.coll}",))
        return {bytes(k): v for k, v in cur.fetchall()}


def scalar(dsn: str, query: sql.Composed, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


def expire_lease(dsn: str, reader: int) -> None:
    """Let ``reader``'s read lease run out (as if its holder had paused past it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "UPDATE {} SET expires_at = clock_timestamp() - interval '1 second'"
            " WHERE id = %s").format(sql.Identifier(CONTROL, "readers")), (reader,))


class LeasedSink(Sink):
    """The sink, applying a batch that names no read lease under :attr:`lease` once
    :meth:`lease_all` opened it: a backfill read of ``NS`` in flight for the whole test,
    so deletes leave tombstones (see :mod:`cdc.sink.readers`)."""

    lease: int | None = None

    async def lease_all(self, *namespaces: Namespace) -> LeasedSink:
        """Open a lease on each of ``namespaces`` (default ``NS``); batches name the first."""
        for ns in namespaces or (NS,):
            reader = await self.open_reader(ns, "test", 3600)
            self.lease = reader if self.lease is None else self.lease
        return self

    async def stage(self, batch: Batch) -> Staged:
        if batch.reader is None and self.lease is not None:
            batch = msgspec.structs.replace(batch, reader=self.lease)
        return await super().stage(batch)
