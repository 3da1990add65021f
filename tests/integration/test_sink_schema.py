"""Control schema migrations and target DDL against real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

from cdc.batch import Batch
from cdc.errors import ControlError
from cdc.mapping import Column, TableShape
from cdc.sink import CONTROL_SCHEMA_VERSION, Sink, migrate_sync
from cdc.sink.ddl import ensure_tables
from cdc.types import Namespace
from tests.integration.sink_support import CONTROL, key_of, mapper_for, rows, upsert

CONTRACT = {
    "schema_migrations": {"version": "integer", "applied_at": "timestamp with time zone"},
    "checkpoints": {"stream": "text", "resume_token": "bytea", "cluster_time": "bigint",
                    "updated_at": "timestamp with time zone"},
    "phase": {"singleton": "boolean", "phase": "text", "reason": "text",
              "updated_at": "timestamp with time zone"},
    "tombstones": {"table_name": "text", "key": "bytea", "version": "bigint"},
    "dead_letters": {"id": "bigint", "namespace": "text", "id_bson": "bytea",
                     "version": "bigint", "raw": "bytea", "reason": "text",
                     "created_at": "timestamp with time zone",
                     "resolved_at": "timestamp with time zone"},
    "chunks": {"id": "bigint", "namespace": "text", "seq": "integer", "lower": "bytea",
               "upper": "bytea", "status": "text", "attempts": "integer", "docs": "bigint",
               "bytes": "bigint", "lease_owner": "text",
               "lease_until": "timestamp with time zone", "read_started": "bigint",
               "updated_at": "timestamp with time zone"},
    "audit": {"id": "bigint", "at": "timestamp with time zone", "caller": "text",
              "verb": "text", "args": "jsonb", "outcome": "text"},
    "stream_state": {"key": "text", "value": "jsonb"},
    "readers": {"id": "bigint", "namespace": "text", "holder": "text", "lease": "interval",
                "expires_at": "timestamp with time zone",
                "started_at": "timestamp with time zone"},
}
VERSIONS = list(range(1, CONTROL_SCHEMA_VERSION + 1))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def columns(dsn: str, schema: str) -> dict[str, dict[str, str]]:
    with psycopg.connect(dsn) as conn:
        found: dict[str, dict[str, str]] = {}
        for table, column, dtype in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s", (schema,)
        ).fetchall():
            found.setdefault(table, {})[column] = dtype
        return found


def test_control_schema_matches_the_contract_and_migrating_again_changes_nothing(
    pg_dsn: str,
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert migrate_sync(conn, CONTROL) == VERSIONS
        assert migrate_sync(conn, CONTROL) == []
        versions = conn.execute(sql.SQL(
            "SELECT version FROM {}.schema_migrations ORDER BY version").format(
            sql.Identifier(CONTROL))).fetchall()
    assert versions == [(v,) for v in VERSIONS]
    assert columns(pg_dsn, CONTROL) == CONTRACT


def test_two_daemons_migrating_at_once_both_succeed(pg_dsn: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                barrier.wait()
                results.append(migrate_sync(conn, CONTROL))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results) == [[], VERSIONS]


def test_phase_table_holds_a_single_row(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_sync(conn, CONTROL)
        conn.execute(sql.SQL("INSERT INTO {}.phase (phase) VALUES ('init')").format(
            sql.Identifier(CONTROL)))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("INSERT INTO {}.phase (phase) VALUES ('init')").format(
                sql.Identifier(CONTROL)))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql.SQL(
                "INSERT INTO {}.phase (singleton, phase) VALUES (false, 'init')").format(
                sql.Identifier(CONTROL)))


SHAPE = TableShape("app", "things", (Column("_key", "bytea"), Column("name", "text"),
                                     Column("n", "bigint")), ("_key",))


@pytest.mark.anyio
async def test_target_tables_are_created_idempotently_with_a_version_column(
    pg_dsn: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await ensure_tables(conn, [SHAPE])
        await ensure_tables(conn, [SHAPE])
    assert columns(pg_dsn, "app") == {"things": {"_key": "bytea", "name": "text",
                                                 "n": "bigint", "_m2p_version": "bigint"}}
    with psycopg.connect(pg_dsn) as conn:
        nullable = conn.execute(
            "SELECT is_nullable FROM information_schema.columns WHERE table_schema = 'app'"
            " AND column_name = '_m2p_version'").fetchone()
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'app.things'::regclass"
            " AND i.indisprimary").fetchall()
    assert nullable == ("NO",)
    assert pk == [("_key",)]


@pytest.mark.anyio
async def test_target_tables_expand_and_never_drop(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.things (_key bytea PRIMARY KEY, legacy text)")
        conn.execute("INSERT INTO app.things VALUES ('\\x01', 'kept')")
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await ensure_tables(conn, [SHAPE])
    assert columns(pg_dsn, "app")["things"] == {
        "_key": "bytea", "legacy": "text", "name": "text", "n": "bigint",
        "_m2p_version": "bigint"}
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT legacy, _m2p_version FROM app.things").fetchall() == [
            ("kept", 0)]


@pytest.mark.anyio
async def test_tables_of_a_namespace_seen_first_at_runtime_are_created(pg_dsn: str) -> None:
    fresh = Namespace("crm", "contacts")
    sink = await Sink.open(pg_dsn, CONTROL, mapper_for)
    try:
        await sink.apply(Batch([upsert(1, 3, ns=fresh)]))
        await sink.apply(Batch([upsert(2, 4, ns=fresh)]))
    finally:
        await sink.close()
    assert set(rows(pg_dsn, fresh)) == {key_of(1, fresh), key_of(2, fresh)}


def test_a_control_schema_newer_than_this_version_is_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_sync(conn, CONTROL)
        conn.execute(sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(
            sql.Identifier(CONTROL)), (CONTROL_SCHEMA_VERSION + 1,))
        with pytest.raises(ControlError, match="newer than this mongo2pg knows"):
            migrate_sync(conn, CONTROL)
