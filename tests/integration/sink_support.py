"""Shared helpers of the sink's integration tests: changes, batches, reading the target."""

from __future__ import annotations

import json
from typing import Any

import bson
import psycopg
from psycopg import sql

from cdc.batch import Change, Op, Origin
from cdc.errors import MappingError
from cdc.mapping.model import Column, MappedDocument, TableShape
from cdc.types import Namespace

CONTROL = "m2p_ctl"
NS = Namespace("shop", "orders")


class TempDocumentMapper:
    """TEMPORARY stand-in until wip/mapping lands (replaced by the real DocumentMapper)."""

    def __init__(self, schema: str, table: str) -> None:
        self._table = table
        self._shape = TableShape(
            schema, table,
            (Column("_key", "bytea"), Column("_id", "text", "_id"),
             Column("_id_bson", "bytea"), Column("doc", "jsonb")),
            ("_key",),
        )

    def tables(self) -> tuple[TableShape, ...]:
        return (self._shape,)

    def map_key(self, id_bson: bytes) -> bytes:
        return id_bson

    def map_document(self, raw: bytes) -> MappedDocument:
        doc = bson.decode(raw)
        text = json.dumps(doc, default=str)
        if "\\u0000" in text:
            raise MappingError("U+0000 cannot be stored in jsonb")
        id_bson = bson.encode({"_id": doc["_id"]})
        return MappedDocument(id_bson, {self._table: [(id_bson, str(doc["_id"]), id_bson,
                                                       text)]})


def mapper_for(ns: Namespace) -> TempDocumentMapper:
    return TempDocumentMapper(ns.db, ns.coll)


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
