"""Target tables from the mapping's :class:`~cdc.mapping.model.TableShape`: expand only.

:func:`ensure_tables` makes the target match what the mapping describes without ever
taking anything away: it creates the schema and each table (data columns in the
mapping's order, then ``_m2p_version bigint not null``, primary key on the shape's key
columns — the key of a child table starts with its parent's key, so that index also
serves "the rows of this parent"), and adds the columns a table lacks. It never drops
or retypes a column: the mapping may grow while the daemon runs (wildcard namespaces,
new fields), and old data is never the migrator's to delete (DESIGN §3.9).

DDL is the control plane (psycopg, composed with :mod:`psycopg.sql`). It runs in one
transaction under an advisory lock keyed by the schema, so daemons that see a new
table at the same moment do not race on ``CREATE TABLE IF NOT EXISTS`` (which is not
safe against concurrent creation of the same name in PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from cdc.errors import InvariantError
from cdc.mapping.model import TableShape
from cdc.sink.migrations import LOCK_SPACE

VERSION_COLUMN = "_m2p_version"


def check_shape(shape: TableShape) -> None:
    """The sink relies on: a non-empty key made of listed columns; one key column on a root."""
    names = [c.name for c in shape.columns]
    if not shape.key_columns or any(k not in names for k in shape.key_columns):
        raise InvariantError(f"table {shape.qualified}: key columns must be data columns")
    if shape.parent is None and len(shape.key_columns) != 1:
        raise InvariantError(f"root table {shape.qualified} must have exactly one key column")
    if VERSION_COLUMN in names:
        raise InvariantError(f"table {shape.qualified} uses the reserved column {VERSION_COLUMN}")


def create_table_sql(shape: TableShape) -> sql.Composed:
    cols = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
        for c in shape.columns
    ]
    cols.append(sql.SQL("{} bigint NOT NULL").format(sql.Identifier(VERSION_COLUMN)))
    cols.append(
        sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(sql.Identifier(k) for k in shape.key_columns)
        )
    )
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.Identifier(shape.schema, shape.name), sql.SQL(", ").join(cols)
    )


async def ensure_tables(
    conn: psycopg.AsyncConnection[tuple[object, ...]], shapes: Iterable[TableShape]
) -> None:
    """Create or expand every table of ``shapes`` (idempotent, concurrency-safe)."""
    shapes = list(shapes)
    for shape in shapes:
        check_shape(shape)
    async with conn.transaction():
        for schema in sorted({s.schema for s in shapes}):
            await conn.execute(
                sql.SQL("SELECT pg_advisory_xact_lock({}, hashtext({}))").format(
                    sql.Literal(LOCK_SPACE), sql.Literal(f"ddl:{schema}")
                )
            )
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        for shape in shapes:
            await conn.execute(create_table_sql(shape))
            cur = await conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped",
                (sql.Identifier(shape.schema, shape.name).as_string(conn),),
            )
            present = {str(row[0]) for row in await cur.fetchall()}
            for col in shape.columns:
                if col.name not in present:
                    await conn.execute(
                        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                            sql.Identifier(shape.schema, shape.name),
                            sql.Identifier(col.name),
                            sql.SQL(col.pg_type),
                        )
                    )
            if VERSION_COLUMN not in present:
                # A table created before the sink managed it: existing rows count as
                # version 0, older than any change, so every real change wins over them.
                await conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} bigint NOT NULL"
                            " DEFAULT 0").format(
                        sql.Identifier(shape.schema, shape.name),
                        sql.Identifier(VERSION_COLUMN),
                    )
                )
