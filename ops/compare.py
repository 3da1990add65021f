"""Document-by-document comparison of MongoDB and PostgreSQL through the mapping.

Used by ``make demo`` and the end-to-end tests to state "both sides are equal". Every
source document of a namespace is mapped with the same pure mapping the sink used; each
produced row is normalised (``jsonb`` parsed and re-serialised with sorted keys,
timestamps in UTC) and hashed; the target table's rows (data columns only, without
``_m2p_version``) are read with a server-side cursor, normalised and hashed the same
way. The two multisets of hashes per table must be equal; the number of rows on one
side without a partner on the other is the mismatch count. Memory is 16 bytes per row.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg
from bson.raw_bson import RawBSONDocument
from psycopg import sql
from pymongo import MongoClient

from cdc.errors import MappingError
from cdc.mapping.model import Mapper, TableShape
from cdc.types import Namespace


class TableComparison(msgspec.Struct, frozen=True):
    table: str
    source_rows: int
    target_rows: int
    missing: int
    """Rows the source maps to that the target lacks (or holds with other values)."""
    extra: int
    """Target rows no source document maps to."""


class Comparison(msgspec.Struct, frozen=True):
    documents: int
    unmappable: int
    tables: list[TableComparison]

    @property
    def mismatches(self) -> int:
        return sum(t.missing + t.extra for t in self.tables)


def _norm(value: Any, pg_type: str) -> Any:
    if value is None:
        return None
    if pg_type == "jsonb":
        parsed = json.loads(value) if isinstance(value, str) else value
        return json.dumps(parsed, sort_keys=True, separators=(",", ":"))
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, float):
        return repr(value)
    return value


def _digest(row: Sequence[Any], shape: TableShape) -> bytes:
    normed = tuple(_norm(v, c.pg_type) for v, c in zip(row, shape.columns, strict=True))
    return hashlib.blake2b(repr(normed).encode(), digest_size=16).digest()


def compare_namespace(mongo: MongoClient[Any], dsn: str, namespace: Namespace,
                      mapper: Mapper) -> Comparison:
    shapes = mapper.tables()
    source: dict[str, Counter[bytes]] = {s.name: Counter() for s in shapes}
    documents = unmappable = 0
    coll = mongo[namespace.db].get_collection(namespace.coll).with_options(
        codec_options=mongo.codec_options.with_options(document_class=RawBSONDocument))
    by_name = {s.name: s for s in shapes}
    for doc in coll.find({}, batch_size=5000):
        documents += 1
        try:
            mapped = mapper.map_document(doc.raw)
        except MappingError:
            unmappable += 1
            continue
        for table, rows in mapped.rows.items():
            shape = by_name[table]
            for row in rows:
                source[table][_digest(row, shape)] += 1
    tables: list[TableComparison] = []
    with psycopg.connect(dsn) as conn:
        for shape in shapes:
            target: Counter[bytes] = Counter()
            exists = conn.execute("SELECT to_regclass(%s)", (
                sql.Identifier(shape.schema, shape.name).as_string(conn),)).fetchone()
            if exists and exists[0] is not None:
                cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in shape.columns)
                with conn.cursor(name="compare") as cur:
                    cur.itersize = 5000
                    cur.execute(sql.SQL("SELECT {} FROM {}").format(
                        cols, sql.Identifier(shape.schema, shape.name)))
                    for row in cur:
                        target[_digest(row, shape)] += 1
            src = source[shape.name]
            tables.append(TableComparison(
                shape.qualified, sum(src.values()), sum(target.values()),
                sum((src - target).values()), sum((target - src).values())))
    return Comparison(documents, unmappable, tables)


def compare_all(mongo: MongoClient[Any], dsn: str, namespaces: Sequence[Namespace],
                mapper_for: Callable[[Namespace], Mapper]) -> Comparison:
    """Compare every namespace; the sum of their comparisons."""
    documents = unmappable = 0
    tables: list[TableComparison] = []
    for ns in namespaces:
        c = compare_namespace(mongo, dsn, ns, mapper_for(ns))
        documents += c.documents
        unmappable += c.unmappable
        tables.extend(c.tables)
    return Comparison(documents, unmappable, tables)
