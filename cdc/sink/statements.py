"""The SQL the data plane runs for one namespace, built once per table layout.

For a namespace with root table ``R`` (key ``k``) and child tables ``C…`` the sink
keeps session-local staging tables (``pg_temp``, ``ON COMMIT DELETE ROWS``, no
constraints) that COPY fills, and runs per batch:

* **delete** — one statement: pick the staged deletes that beat the stored state (the
  row's version, or the tombstone's when the row is absent: newer, or equal and from the
  stream), delete those rows from ``R`` and every ``C``, and upsert their tombstones.
* **upsert** — one statement: drop staged rows a tombstone beats, then
  ``INSERT … ON CONFLICT (k) DO UPDATE … WHERE`` the stored version is older (``<`` for
  backfill rows, ``<=`` for stream rows: two inserts in one statement, one per origin —
  their key sets are disjoint after coalescing). The ``WHERE`` of ``ON CONFLICT`` is
  evaluated against the latest committed row version after waiting for its lock, so two
  writers racing on one key end with the newer one. The same statement removes the
  tombstones of the keys it wrote and records them in ``_m2p_applied``.
* **children** — per child table, one statement: for the parents recorded in
  ``_m2p_applied``, upsert the staged child rows and delete the rows the new document no
  longer has (a shrunk array). It is a separate statement so that its snapshot, taken
  after the parent upsert waited for a concurrent writer, sees that writer's children.

Rows are inserted in key order so concurrent writers lock keys in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from cdc.mapping.model import TableShape
from cdc.sink.ddl import VERSION_COLUMN

STREAM_COLUMN = "_m2p_stream"
DELETES_STAGE = "_m2p_del"
APPLIED_STAGE = "_m2p_applied"


def _q(c: sql.Composable) -> str:
    return c.as_string(None)


def _ids(names: list[str] | tuple[str, ...], prefix: str | None = None) -> sql.Composed:
    if prefix is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)


def stage_ddl(name: str, shape: TableShape, *, root: bool) -> str:
    cols = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
            for c in shape.columns]
    cols.append(sql.SQL("{} bigint").format(sql.Identifier(VERSION_COLUMN)))
    if root:
        cols.append(sql.SQL("{} boolean").format(sql.Identifier(STREAM_COLUMN)))
    return _q(sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS"
    ).format(sql.Identifier(name), sql.SQL(", ").join(cols)))


COMMON_STAGE_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {DELETES_STAGE} (t int, k bytea, v bigint, s boolean)"
    " ON COMMIT DELETE ROWS;"
    f"CREATE TEMP TABLE IF NOT EXISTS {APPLIED_STAGE} (t int, k bytea) ON COMMIT DELETE ROWS"
)


@dataclass(frozen=True, slots=True)
class ChildSql:
    shape: TableShape
    stage: str
    statement: str
    columns: tuple[str, ...]
    """Staging columns in COPY order."""


@dataclass(frozen=True, slots=True)
class NamespaceSql:
    """Everything the sink runs for one namespace's table layout."""

    index: int
    root: TableShape
    stage: str
    stage_columns: tuple[str, ...]
    upsert: str
    delete: str
    children: tuple[ChildSql, ...]
    stage_ddl: str
    """Creates the staging tables of this namespace (idempotent, one script)."""


def build(index: int, shapes: tuple[TableShape, ...], control_schema: str) -> NamespaceSql:
    """SQL for ``shapes`` (root first); ``index`` names its staging tables uniquely."""
    root = shapes[0]
    children = shapes[1:]
    ctl = sql.Identifier(control_schema, "tombstones")
    target = sql.Identifier(root.schema, root.name)
    key = root.key_columns[0]
    k = sql.Identifier(key)
    v = sql.Identifier(VERSION_COLUMN)
    st = sql.Identifier(STREAM_COLUMN)
    stage = f"_m2p_s{index}"
    data_cols = [c.name for c in root.columns]
    nonkey = [c for c in data_cols if c != key]
    set_list = sql.SQL(", ").join(
        [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in nonkey]
        + [sql.SQL("{0} = EXCLUDED.{0}").format(v)]
    )
    ins_cols = _ids([*data_cols, VERSION_COLUMN])

    def insert(flag: str, cmp: str) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {target} AS d ({cols}) SELECT {cols} FROM src WHERE {flag}{st}"
            " ORDER BY {k} ON CONFLICT ({k}) DO UPDATE SET {sets}"
            " WHERE d.{v} {cmp} EXCLUDED.{v} RETURNING d.{k}"
        ).format(target=target, cols=ins_cols, flag=sql.SQL(flag), st=st, k=k,
                 sets=set_list, v=v, cmp=sql.SQL(cmp))

    record_applied = (
        sql.SQL(", app AS (INSERT INTO pg_temp.{} (t, k) SELECT {}, k FROM up)").format(
            sql.Identifier(APPLIED_STAGE), sql.Literal(index))
        if children else sql.SQL("")
    )
    upsert = sql.SQL(
        "WITH src AS (SELECT s.* FROM pg_temp.{stage} s WHERE NOT EXISTS ("
        " SELECT 1 FROM {ctl} tb WHERE tb.table_name = $1 AND tb.key = s.{k}"
        " AND (tb.version > s.{v} OR (tb.version = s.{v} AND NOT s.{st})))),"
        " up_s AS ({ins_s}), up_b AS ({ins_b}),"
        " up AS (SELECT {k} AS k FROM up_s UNION ALL SELECT {k} FROM up_b),"
        " tomb AS (DELETE FROM {ctl} tb USING up WHERE tb.table_name = $1 AND tb.key = up.k)"
        "{record_applied}"
        " SELECT count(*) FROM up"
    ).format(stage=sql.Identifier(stage), ctl=ctl, k=k, v=v, st=st,
             ins_s=insert("", "<="), ins_b=insert("NOT ", "<"),
             record_applied=record_applied)

    child_sql: list[ChildSql] = []
    child_deletes: list[sql.Composable] = []
    for n, child in enumerate(children):
        cstage = f"_m2p_s{index}_{n}"
        ctarget = sql.Identifier(child.schema, child.name)
        ccols = [c.name for c in child.columns]
        pk = list(child.key_columns)
        parent_col = sql.Identifier(pk[0])
        csets = sql.SQL(", ").join(
            [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
             for c in ccols if c not in pk]
            + [sql.SQL("{0} = EXCLUDED.{0}").format(v)]
        )
        match = sql.SQL(" AND ").join(
            sql.SQL("s.{0} = d.{0}").format(sql.Identifier(c)) for c in pk
        )
        statement = sql.SQL(
            "WITH parents AS (SELECT k FROM pg_temp.{applied} WHERE t = {idx}),"
            " ins AS (INSERT INTO {ctarget} AS d ({cols}) SELECT {cols} FROM pg_temp.{cstage}"
            " WHERE {parent} IN (SELECT k FROM parents) ORDER BY {pk}"
            " ON CONFLICT ({pk}) DO UPDATE SET {csets}),"
            " del AS (DELETE FROM {ctarget} d WHERE d.{parent} IN (SELECT k FROM parents)"
            " AND NOT EXISTS (SELECT 1 FROM pg_temp.{cstage} s WHERE {match}))"
            " SELECT 1"
        ).format(applied=sql.Identifier(APPLIED_STAGE), idx=sql.Literal(index),
                 ctarget=ctarget, cols=_ids([*ccols, VERSION_COLUMN]),
                 cstage=sql.Identifier(cstage), parent=parent_col, pk=_ids(pk),
                 csets=csets, match=match)
        child_sql.append(ChildSql(child, cstage, _q(statement),
                                  (*ccols, VERSION_COLUMN)))
        child_deletes.append(sql.SQL(
            ", gone_{n} AS (DELETE FROM {ctarget} c USING d WHERE c.{parent} = d.k)"
        ).format(n=sql.SQL(str(n)), ctarget=ctarget, parent=parent_col))

    delete = sql.SQL(
        "WITH d AS (SELECT x.k, x.v FROM pg_temp.{dels} x"
        " LEFT JOIN {target} r ON r.{k} = x.k"
        " LEFT JOIN {ctl} tb ON tb.table_name = $1 AND tb.key = x.k"
        " WHERE x.t = {idx} AND (greatest(r.{v}, tb.version) IS NULL"
        " OR x.v > greatest(r.{v}, tb.version)"
        " OR (x.v = greatest(r.{v}, tb.version) AND x.s))),"
        " gone AS (DELETE FROM {target} r USING d WHERE r.{k} = d.k){child_deletes},"
        " tomb AS (INSERT INTO {ctl} (table_name, key, version) SELECT $1, k, v FROM d"
        " ON CONFLICT (table_name, key) DO UPDATE SET version = EXCLUDED.version)"
        " SELECT count(*) FROM d"
    ).format(dels=sql.Identifier(DELETES_STAGE), target=target, k=k, ctl=ctl,
             idx=sql.Literal(index), v=v, child_deletes=sql.SQL("").join(child_deletes))

    ddl = ";".join(
        [stage_ddl(stage, root, root=True)]
        + [stage_ddl(c.stage, c.shape, root=False) for c in child_sql]
    )
    return NamespaceSql(
        index=index, root=root, stage=stage,
        stage_columns=(*data_cols, VERSION_COLUMN, STREAM_COLUMN),
        upsert=_q(upsert), delete=_q(delete), children=tuple(child_sql), stage_ddl=ddl,
    )
