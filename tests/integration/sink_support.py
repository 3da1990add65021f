"""Shared helpers of the sink's integration tests: changes, batches, reading the target."""

from __future__ import annotations

from typing import Any

import bson
import psycopg
from psycopg import sql

from cdc.batch import Change, Op, Origin
from cdc.mapping import Mapper, MappingConfig, resolve
from cdc.types import Namespace

CONTROL = "m2p_ctl"
MAPPING = MappingConfig()
NS = Namespace("shop", "orders")


def mapper_for(ns: Namespace) -> Mapper:
    """The production mapping of ``ns`` (document mode by default)."""
    return resolve(MAPPING, ns)


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
