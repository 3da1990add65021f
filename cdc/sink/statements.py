"""The SQL the data plane runs for one namespace, built once per table layout.

For a namespace with root table ``R`` (key ``k``) and child tables ``C…`` the sink
keeps session-local staging tables (``pg_temp``, ``ON COMMIT DELETE ROWS``, no
constraints) that COPY fills, and runs per batch:

* **delete** — one statement per origin present (usually one): pick the deletes (passed
  as arrays of keys and versions, the origin as a scalar) that beat the stored state
  (the row's version, or the tombstone's when the row is absent: newer, or equal and
  from the stream), delete those rows from ``R`` and every ``C``, and upsert their
  tombstones. While no read lease of the namespace is
  live (:mod:`cdc.sink.readers`), no tombstone is needed and **delete_rows** runs
  instead: it deletes the rows the deletes beat, from ``R`` and every ``C``, in one
  pass over the keys.
* **upsert** — one statement: skip staged rows their tombstone beats (probed per key
  only when the table has a tombstone at all: one probe per statement answers the
  usual case, no read lease live at the table's deletes), then
  ``INSERT … ON CONFLICT (k) DO UPDATE … WHERE`` the stored version is older (``<`` for
  backfill rows, ``<=`` for stream rows: two inserts in one statement, one per origin —
  their key sets are disjoint after coalescing). The ``WHERE`` of ``ON CONFLICT`` is
  evaluated against the latest committed row version after waiting for its lock, so two
  writers racing on one key end with the newer one. The same statement removes the
  tombstones of the keys it wrote (a key has a row or a tombstone, never both; a deleted
  document has a tombstone if a read lease was live when it was deleted) and records
  the keys in ``_m2p_applied`` for the child statements.
* **children** — two statements for all child tables: delete every child row of the
  parents recorded in ``_m2p_applied``, then insert their staged child rows (a shrunk
  array leaves no row behind). They run after the parent upsert, so their snapshots,
  taken after that upsert waited for a concurrent writer of the same parent, see that
  writer's children; and while this transaction holds the parent's row lock no other
  writer can touch its children. (Delete and insert cannot share one statement: its
  sub-statements run in no defined order, and an insert could meet a row not yet
  deleted.)

Rows are inserted in key order so concurrent writers lock keys in the same order.
Lookups of stored rows and tombstones are scalar subqueries or joins with
``unnest(ARRAY(…))`` or ``unnest`` of a parameter array (which the planner estimates at
a handful of rows; the data plane's sessions use generic plans, see
:func:`cdc.sink.sink.asyncpg_params`): index probes per key, so the cost follows the
batch, not the size of the table or of the tombstone set, whatever the planner guesses
about unanalysed staging tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from cdc.mapping.model import TableShape
from cdc.sink.ddl import VERSION_COLUMN

STREAM_COLUMN = "_m2p_stream"
SEQ_COLUMN = "_m2p_seq"
"""Position of the change in its batch: removes a displaced row from staging."""
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
        cols.append(sql.SQL("{} int").format(sql.Identifier(SEQ_COLUMN)))
    return _q(sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS"
    ).format(sql.Identifier(name), sql.SQL(", ").join(cols)))


COMMON_STAGE_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {APPLIED_STAGE} (t int, k bytea) ON COMMIT DELETE ROWS"
)


@dataclass(frozen=True, slots=True)
class ChildSql:
    shape: TableShape
    stage: str
    columns: tuple[str, ...]
    """Columns in COPY order, the same for the child table and its staging table."""


@dataclass(frozen=True, slots=True)
class NamespaceSql:
    """Everything the sink runs for one namespace's table layout."""

    index: int
    root: TableShape
    stage: str
    stage_columns: tuple[str, ...]
    target_columns: tuple[str, ...]
    """The root table's columns in COPY order (data columns, then the version)."""
    upsert: str
    delete: str
    delete_rows: str
    """The delete without tombstones (no read lease live): rows only."""
    children: tuple[ChildSql, ...]
    drop_children: str
    """Deletes the child rows of the parents the upsert wrote (all child tables)."""
    insert_children: str
    """Inserts their staged child rows (all child tables); runs after drop_children."""
    stage_ddl: str
    """Creates the staging tables of this namespace (idempotent, one script)."""
    drop_staged: str
    """Removes displaced upserts (``$1``: their positions) from this namespace's staging."""
    count_tombstones: str
    """How many of the keys ``$2`` (all between ``$3`` and ``$4``) have a tombstone
    (direct path: none may)."""


def _children_statement(index: int, parts: list[sql.Composable]) -> sql.Composed:
    if not parts:
        return sql.Composed([])
    return sql.SQL(
        "WITH parents AS (SELECT k FROM pg_temp.{applied} WHERE t = {idx}), {parts} SELECT 1"
    ).format(applied=sql.Identifier(APPLIED_STAGE), idx=sql.Literal(index),
             parts=sql.SQL(", ").join(parts))


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

    # Whether the table has a tombstone at all: an uncorrelated subquery, evaluated once
    # per statement with the statement's snapshot (the one the per-key probes would
    # read), so a table without tombstones — no read lease was live at its deletes —
    # costs no probe per key.
    any_tombstone = sql.SQL("(SELECT EXISTS (SELECT 1 FROM {} t0 WHERE t0.table_name = $1))"
                            ).format(ctl)

    def insert(flag: str, cmp: str) -> sql.Composed:
        # The tombstone is read by a scalar subquery: one index probe per staged row,
        # whatever the planner guesses about an unanalysed staging table.
        return sql.SQL(
            "INSERT INTO {target} AS d ({cols}) SELECT {cols} FROM pg_temp.{stage} s"
            " WHERE {flag}s.{st} AND coalesce(CASE WHEN {any} THEN (SELECT tb.version"
            " FROM {ctl} tb WHERE tb.table_name = $1 AND tb.key = s.{k}) END, -1)"
            " {cmp} s.{v}"
            " ORDER BY s.{k} ON CONFLICT ({k}) DO UPDATE SET {sets}"
            " WHERE d.{v} {cmp} EXCLUDED.{v} RETURNING d.{k}"
        ).format(target=target, cols=ins_cols, stage=sql.Identifier(stage), flag=sql.SQL(flag),
                 st=st, ctl=ctl, k=k, sets=set_list, v=v, cmp=sql.SQL(cmp), any=any_tombstone)

    record_applied = (
        sql.SQL(", app AS (INSERT INTO pg_temp.{} (t, k) SELECT {}, k FROM up)").format(
            sql.Identifier(APPLIED_STAGE), sql.Literal(index))
        if children else sql.SQL("")
    )
    upsert = sql.SQL(
        "WITH up_s AS ({ins_s}), up_b AS ({ins_b}),"
        " up AS (SELECT {k} AS k FROM up_s UNION ALL SELECT {k} FROM up_b),"
        " tomb AS (DELETE FROM {ctl} tb USING unnest(ARRAY(SELECT k FROM up)) AS u(k)"
        " WHERE {any} AND tb.table_name = $1 AND tb.key = u.k)"
        "{record_applied}"
        " SELECT count(*) FROM up"
    ).format(ctl=ctl, k=k, ins_s=insert("", "<="), ins_b=insert("NOT ", "<"),
             record_applied=record_applied, any=any_tombstone)

    child_sql: list[ChildSql] = []
    child_deletes: list[sql.Composable] = []
    drop_children: list[sql.Composable] = []
    insert_children: list[sql.Composable] = []
    for n, child in enumerate(children):
        cstage = f"_m2p_s{index}_{n}"
        ctarget = sql.Identifier(child.schema, child.name)
        ccols = [c.name for c in child.columns]
        parent_col = sql.Identifier(child.key_columns[0])
        drop_children.append(sql.SQL(
            "c{n} AS (DELETE FROM {ctarget} c USING unnest(ARRAY(SELECT k FROM parents))"
            " AS u(k) WHERE c.{parent} = u.k)"
        ).format(n=sql.SQL(str(n)), ctarget=ctarget, parent=parent_col))
        insert_children.append(sql.SQL(
            "c{n} AS (INSERT INTO {ctarget} ({cols}) SELECT {cols} FROM pg_temp.{cstage}"
            " WHERE {parent} IN (SELECT k FROM parents))"
        ).format(n=sql.SQL(str(n)), ctarget=ctarget, cols=_ids([*ccols, VERSION_COLUMN]),
                 cstage=sql.Identifier(cstage), parent=parent_col))
        child_sql.append(ChildSql(child, cstage, (*ccols, VERSION_COLUMN)))
        child_deletes.append(sql.SQL(
            ", gone_{n} AS (DELETE FROM {ctarget} c USING unnest(ARRAY(SELECT k FROM d))"
            " AS u(k) WHERE c.{parent} = u.k)"
        ).format(n=sql.SQL(str(n)), ctarget=ctarget, parent=parent_col))

    # The batch's deletes of one origin arrive as parallel arrays (keys, versions) and
    # the origin as a scalar (from the stream or not): unnest yields them for index
    # probes, one per key.
    def deletes(first: int) -> sql.Composable:
        return sql.SQL("unnest(${}::bytea[], ${}::bigint[]) AS x(k, v)"
                       ).format(*(sql.SQL(str(first + n)) for n in range(2)))

    delete = sql.SQL(
        "WITH c AS MATERIALIZED (SELECT x.k, x.v, $4::boolean AS s, greatest("
        "(SELECT r.{v} FROM {target} r WHERE r.{k} = x.k),"
        " (SELECT tb.version FROM {ctl} tb WHERE tb.table_name = $1 AND tb.key = x.k))"
        " AS stored FROM {deletes}),"
        " d AS (SELECT k, v FROM c WHERE stored IS NULL OR v > stored OR (v = stored AND s)),"
        " gone AS (DELETE FROM {target} r USING unnest(ARRAY(SELECT k FROM d)) AS u(k)"
        " WHERE r.{k} = u.k)"
        "{child_deletes},"
        " tomb AS (INSERT INTO {ctl} (table_name, key, version) SELECT $1, k, v FROM d"
        " ON CONFLICT (table_name, key) DO UPDATE SET version = EXCLUDED.version)"
        " SELECT count(*) FROM d"
    ).format(deletes=deletes(2), target=target, k=k, ctl=ctl, v=v,
             child_deletes=sql.SQL("").join(child_deletes))

    delete_rows = sql.SQL(
        "WITH d AS (DELETE FROM {target} r USING {deletes}"
        " WHERE r.{k} = x.k AND (r.{v} < x.v OR (r.{v} = x.v AND $3::boolean))"
        " RETURNING r.{k} AS k)"
        "{child_deletes}"
        " SELECT count(*) FROM d"
    ).format(deletes=deletes(1), target=target, k=k, v=v,
             child_deletes=sql.SQL("").join(child_deletes))

    drop_staged = sql.SQL(
        "DELETE FROM pg_temp.{stage} WHERE {seq} = ANY($1::int[])"
    ).format(stage=sql.Identifier(stage), seq=sql.Identifier(SEQ_COLUMN))

    ddl = ";".join(
        [stage_ddl(stage, root, root=True)]
        + [stage_ddl(c.stage, c.shape, root=False) for c in child_sql]
    )
    return NamespaceSql(
        index=index, root=root, stage=stage,
        stage_columns=(*data_cols, VERSION_COLUMN, STREAM_COLUMN, SEQ_COLUMN),
        target_columns=(*data_cols, VERSION_COLUMN),
        upsert=_q(upsert), delete=_q(delete), delete_rows=_q(delete_rows),
        children=tuple(child_sql), stage_ddl=ddl,
        drop_staged=_q(drop_staged),
        drop_children=_q(_children_statement(index, drop_children)),
        insert_children=_q(_children_statement(index, insert_children)),
        count_tombstones=_q(sql.SQL(
            # One index range probe answers the usual case (no tombstone between the
            # batch's smallest and largest key); only then one probe per key.
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM {ctl} tb WHERE tb.table_name = $1"
            " AND tb.key BETWEEN $3 AND $4) THEN (SELECT count(*) FROM"
            " unnest($2::bytea[]) AS u(k) WHERE (SELECT true FROM {ctl} tb"
            " WHERE tb.table_name = $1 AND tb.key = u.k)) ELSE 0 END"
        ).format(ctl=ctl)),
    )
