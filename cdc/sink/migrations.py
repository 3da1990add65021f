"""Versioned, idempotent migrations of the control schema (the contract in BRIEF.md).

Each migration is a numbered list of DDL statements composed with :mod:`psycopg.sql`
(the schema name is an identifier, never pasted text). :func:`migrate` runs in one
transaction that first takes a transaction-scoped advisory lock derived from the schema
name, so two daemons starting at once serialise: the second waits, then finds every
version already recorded in ``schema_migrations`` and applies nothing. Migrations are
append-only: a released number is never edited, a change is a new number.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from cdc.errors import ControlError

# First key of every advisory lock mongo2pg takes (the two-int form keeps our locks in a
# space of their own); the second key is hashtext() of what is locked.
LOCK_SPACE = 0x6D327067  # "m2pg"

Statement = Callable[[sql.Identifier], sql.Composed]


def _s(text: str) -> Statement:
    """A statement whose only variable part is the control schema, written ``{s}``."""
    return lambda schema: sql.SQL(text).format(s=schema)


MIGRATIONS: tuple[tuple[int, tuple[Statement, ...]], ...] = (
    (
        1,
        (
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.checkpoints (stream text PRIMARY KEY,"
                " resume_token bytea, cluster_time bigint NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ),
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.phase ("
                " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
                " phase text NOT NULL, reason text,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ),
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.tombstones (table_name text, key bytea,"
                " version bigint NOT NULL, PRIMARY KEY (table_name, key))"
            ),
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.dead_letters (id bigserial PRIMARY KEY,"
                " namespace text NOT NULL, id_bson bytea, version bigint, raw bytea,"
                " reason text NOT NULL, created_at timestamptz DEFAULT now(),"
                " resolved_at timestamptz)"
            ),
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.chunks (id bigserial PRIMARY KEY,"
                " namespace text NOT NULL, seq int NOT NULL, lower bytea, upper bytea,"
                " status text NOT NULL DEFAULT 'pending',"
                " attempts int NOT NULL DEFAULT 0, docs bigint NOT NULL DEFAULT 0,"
                " bytes bigint NOT NULL DEFAULT 0, lease_owner text,"
                " lease_until timestamptz, read_started bigint,"
                " updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (namespace, seq))"
            ),
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.audit (id bigserial PRIMARY KEY,"
                " at timestamptz NOT NULL DEFAULT now(), caller text, verb text NOT NULL,"
                " args jsonb, outcome text NOT NULL)"
            ),
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.stream_state (key text PRIMARY KEY,"
                " value jsonb NOT NULL)"
            ),
        ),
    ),
    (
        2,
        (
            # Read leases of backfill reads (see cdc.sink.readers): while one is live
            # on a namespace, its deletes leave tombstones.
            _s(
                "CREATE TABLE IF NOT EXISTS {s}.readers (id bigserial PRIMARY KEY,"
                " namespace text NOT NULL, holder text NOT NULL, lease interval NOT NULL,"
                " expires_at timestamptz NOT NULL,"
                " started_at timestamptz NOT NULL DEFAULT now())"
            ),
            _s(
                "CREATE INDEX IF NOT EXISTS readers_namespace ON {s}.readers"
                " (namespace, expires_at)"
            ),
        ),
    ),
)
"""(version, statements) in order. Append only."""

LATEST = MIGRATIONS[-1][0]


def _refuse_newer(schema: str, done: set[int]) -> None:
    """A control schema migrated by a newer mongo2pg is not ours to write: an older
    binary does not know its rules (e.g. read leases, migration 2)."""
    if done and max(done) > LATEST:
        raise ControlError("schema_newer", f"control schema {schema!r} is at version "
                           f"{max(done)}, newer than this mongo2pg knows ({LATEST}):"
                           " run the newer version, or stop it before going back")


def _lock(schema: str) -> sql.Composed:
    return sql.SQL("SELECT pg_advisory_xact_lock({}, hashtext({}))").format(
        sql.Literal(LOCK_SPACE), sql.Literal(f"migrations:{schema}")
    )


def _bootstrap(schema: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations (version int PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(schema),
    ]


async def migrate(conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str) -> list[int]:
    """Bring the control schema up to :data:`LATEST`; return the versions applied now."""
    ident = sql.Identifier(schema)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(_lock(schema))
        for stmt in _bootstrap(ident):
            await conn.execute(stmt)
        cur = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(ident)
        )
        done = {int(str(row[0])) for row in await cur.fetchall()}
        _refuse_newer(schema, done)
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            for build in statements:
                await conn.execute(build(ident))
            await conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES ({})").format(
                    ident, sql.Literal(version)
                )
            )
            applied.append(version)
    return applied


def migrate_sync(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[int]:
    """:func:`migrate` for synchronous callers (CLI commands, tests)."""
    ident = sql.Identifier(schema)
    applied: list[int] = []
    with conn.transaction():
        conn.execute(_lock(schema))
        for stmt in _bootstrap(ident):
            conn.execute(stmt)
        done = {
            int(str(row[0]))
            for row in conn.execute(
                sql.SQL("SELECT version FROM {}.schema_migrations").format(ident)
            ).fetchall()
        }
        _refuse_newer(schema, done)
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            for build in statements:
                conn.execute(build(ident))
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES ({})").format(
                    ident, sql.Literal(version)
                )
            )
            applied.append(version)
    return applied
