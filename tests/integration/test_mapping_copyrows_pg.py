"""copy_rows' binary COPY streams load into real PostgreSQL tables, and the tables end
up equal to those loaded from map_document's records (asyncpg copy_records_to_table),
in both modes and in the staging form; documents in ``left`` are mapped by Python."""

from __future__ import annotations

import datetime
import io
import random
from typing import Any

import anyio
import asyncpg
import bson
import pytest
from bson.int64 import Int64
from bson.objectid import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc.errors import MappingError
from cdc.mapping.model import TableShape
from cdc.sink.sink import asyncpg_params
from tests.unit.bson_strategies import documents
from tests.unit.test_mapping_copyrows import (
    COLUMN,
    DOCUMENT,
    FastMapper,
    _column_documents,
    edge_documents,
)

SCHEMAS = ("fast", "slow")


def _ddl(schema: str, shape: TableShape, root: bool, staging: bool) -> str:
    columns = [f'"{c.name}" {c.pg_type}' for c in shape.columns]
    columns.append("_m2p_version bigint NOT NULL")
    if root and staging:
        columns += ["_m2p_stream boolean NOT NULL", "_m2p_seq integer NOT NULL"]
    return f'CREATE TABLE {schema}."{shape.name}" ({", ".join(columns)})'


def _rows_query(schema: str, table: str) -> str:
    """Every row as text, sorted: jsonb compares as jsonb, doubles exactly (-0, NaN)."""
    query = sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(schema, table))
    return query.as_string(None)


def _names(shape: TableShape, root: bool, staging: bool) -> list[str]:
    extra = ["_m2p_version", "_m2p_stream", "_m2p_seq"] if root and staging else [
        "_m2p_version"]
    return [c.name for c in shape.columns] + extra


async def _load(dsn: str, mapper: FastMapper, raws: list[bytes], staging: bool
                ) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Load ``raws`` both ways; return the differing rows per table (as row text) and
    the row count of each table."""
    shapes = mapper.tables()
    versions = [10 * i + 1 for i in range(len(raws))]
    streams = [i % 3 == 0 for i in range(len(raws))] if staging else None
    positions = [i for i in range(len(raws))] if staging else None

    def records(i: int) -> dict[str, list[tuple[Any, ...]]]:
        try:
            mapped = mapper.map_document(raws[i])
        except MappingError:
            return {}  # dead-lettered: no rows
        extra: tuple[Any, ...] = (versions[i],)
        out = {}
        for j, shape in enumerate(shapes):
            tail = extra + ((streams[i], positions[i])
                            if j == 0 and streams is not None and positions is not None
                            else ())
            out[shape.name] = [(*row, *tail) for row in mapped.rows[shape.name]]
        return out

    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        for schema in SCHEMAS:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
            for j, shape in enumerate(shapes):
                await conn.execute(_ddl(schema, shape, j == 0, staging))
        result = mapper.copy_rows(raws, versions, streams, positions)
        assert result is not None
        for shape, stream in zip(shapes, (result.root, *result.children), strict=True):
            await conn.copy_to_table(shape.name, schema_name="fast", format="binary",
                                     source=io.BytesIO(stream))
        batches = [("fast", result.left), ("slow", range(len(raws)))]
        for schema, indices in batches:
            rows: dict[str, list[tuple[Any, ...]]] = {s.name: [] for s in shapes}
            for i in indices:
                for name, table_rows in records(i).items():
                    rows[name] += table_rows
            for j, shape in enumerate(shapes):
                await conn.copy_records_to_table(
                    shape.name, schema_name=schema, records=rows[shape.name],
                    columns=_names(shape, j == 0, staging))
        diff, counts = {}, {}
        for shape in shapes:
            fast = await conn.fetch(_rows_query("fast", shape.name))
            slow = await conn.fetch(_rows_query("slow", shape.name))
            counts[shape.name] = len(slow)
            if fast != slow:
                diff[shape.name] = sorted({r[0] for r in fast} ^ {r[0] for r in slow})
        return diff, counts
    finally:
        await conn.close()


def _orders(n: int) -> list[bytes]:
    rng = random.Random(3)
    return [bson.encode({
        "_id": rng.choice([i, Int64(i * 1_000_003), f"order-{i}", ObjectId()]),
        "s": rng.choice(["new", "paid", None, 5]), "n": rng.randint(-5, 5),
        "i": Int64(rng.randint(-(2**32), 2**32)), "d": rng.choice([1.5, -0.0, float("nan")]),
        "b": rng.random() < 0.5,
        "t": datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=rng.randint(0, 9**9)),
        "a": {"s": "é", "x": {"n": rng.randint(0, 9)}},
        "items": [{"s": f"sku{j}", "n": j, "x": {"d": j / 4}} for j in range(rng.randint(0, 3))],
        "c": {"z": [{"i": j, "t": datetime.datetime(1, 1, 1)} for j in range(2)]},
        "z": [rng.choice([1, "x", {"k": None}, []])],
    }) for i in range(n)]


@pytest.mark.parametrize("staging", [False, True])
@pytest.mark.parametrize("mapper", [DOCUMENT, COLUMN], ids=["document", "column"])
def test_copy_rows_tables_equal_map_document_tables(pg_dsn: str, mapper: FastMapper,
                                                    staging: bool) -> None:
    raws = [bson.encode(doc) for doc in edge_documents()] + _orders(200)
    diff, counts = anyio.run(_load, pg_dsn, mapper, raws, staging)
    assert diff == {}
    assert counts[mapper.tables()[0].name] > 100
    assert all(counts.values())  # every child table got rows


@given(st.lists(documents() | _column_documents, max_size=12))
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_copy_rows_tables_equal_for_generated_documents(pg_dsn: str,
                                                        docs: list[dict[str, Any]]) -> None:
    raws = [bson.encode(doc) for doc in docs]
    for mapper in (DOCUMENT, COLUMN):
        diff, _counts = anyio.run(_load, pg_dsn, mapper, raws, True)
        assert diff == {}
