"""The PostgreSQL sink: applies batches with exactly-once effect (DESIGN §3.1, §3.3, §3.4).

:class:`Sink` owns an asyncpg pool (the data plane) and one psycopg connection (the
control plane: migrations and target DDL). ``apply`` runs one transaction per batch, in
two parts: :meth:`Sink.stage` (steps 1–3) and :meth:`Staged.commit` (steps 4–5).

1. make sure the namespace's tables exist (first sight of a namespace or a grown layout
   runs :func:`cdc.sink.ddl.ensure_tables`, then the result is cached);
2. plan (pure, :mod:`cdc.sink.plan`): coalesce, map deletes' keys; documents are mapped
   later, while their rows stream into COPY (dead letters are collected on the way);
3. open the transaction on a pooled connection and COPY (binary) the net upserts into
   the session's staging tables — the binary streams the mapping's C path writes for
   the whole batch (``Mapper.copy_rows``, see
   :meth:`~cdc.sink.plan.NamespacePlan.fast_rows`), else rows mapped one by one in
   Python while they stream into COPY. Staging touches nothing but the session's own
   temporary tables and takes no lock, so a caller that applies batches in order (the
   tailer) stages the next batch while the one before it commits on another
   connection; a batch that only inserts (backfill copies, stream inserts) into keys
   the target has never seen skips staging (step 4);
4. check the stream fence (the checkpoint row, locked: another applier committed past
   this batch's start, or the batch before it is not committed — refused), take a
   transaction-scoped advisory lock per root table, sorted by lock key —
   *shared* when the batch only upserts the table, *exclusive* when it deletes from it.
   Upserts race safely through ``ON CONFLICT`` row locks; a delete's "no row and no newer
   tombstone" test is a snapshot read, so it must not overlap a concurrent upsert of the
   same table (otherwise a backfill row could land beside a fresh tombstone). In the same
   round trip a batch of backfill changes renews its read lease, or is refused
   (:mod:`cdc.sink.readers`); a batch with deletes then looks up which of its namespaces
   have a live read lease: only their deletes leave tombstones. Inserts into keys the
   target has never seen are COPYed straight into the target tables inside a savepoint
   now (:meth:`Sink._direct`: it needs the table's lock);
5. run the delete, upsert and child statements of :mod:`cdc.sink.statements`, COPY dead
   letters, upsert the checkpoint (never backwards) and mark the backfill chunk done —
   then commit.

Staging tables are temporary tables of the pooled sessions, created once per
connection; pooled connections are released without a reset query because the sink
leaves no other session state.

Connection loss, serialization failures and deadlocks surface as
:class:`~cdc.errors.TargetUnavailable`; the transaction is then rolled back as a whole,
so a retry of the same batch is exact.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Self

import anyio
import asyncpg
import psycopg
from psycopg import sql

from cdc.batch import Batch, Checkpoint, Op
from cdc.errors import (
    InvariantError,
    ReadLeaseLost,
    StreamFenced,
    TargetUnavailable,
    is_retriable,
    target_errors,
)
from cdc.mapping.model import Mapper, TableShape
from cdc.sink import ddl, readers, statements
from cdc.sink.migrations import LOCK_SPACE, migrate
from cdc.sink.plan import ApplyResult, DeadLetter, NamespacePlan, Plan, plan_batch
from cdc.types import Namespace

MapperFor = Callable[[Namespace], Mapper]


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """asyncpg connect arguments for a libpq DSN (URL or ``key=value`` form)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    params: dict[str, Any] = {}
    for ours, theirs in (("host", "host"), ("port", "port"), ("user", "user"),
                         ("password", "password"), ("dbname", "database"),
                         ("sslmode", "ssl")):
        if info.get(ours) is not None:
            params[theirs] = int(str(info[ours])) if ours == "port" else info[ours]
    # work_mem: the merge sorts a batch's staged rows by key in memory, not on disk.
    # jit off: the merge's per-row subplans inflate cost estimates past jit_above_cost,
    # and compiling them takes longer than running them, every batch.
    # Generic plans: the statements run again and again with new arrays of keys; planned
    # once, unnest($n) of a parameter is estimated at a handful of rows, so each key is
    # an index probe whatever the batch's size (a custom plan for 5,000 keys may hash a
    # sequential scan of the whole table instead).
    settings = {"client_min_messages": "warning", "work_mem": "64MB", "jit": "off",
                "plan_cache_mode": "force_generic_plan"}
    if info.get("application_name"):
        settings["application_name"] = str(info["application_name"])
    params["server_settings"] = settings
    return params


def _lock_key(qualified: str) -> int:
    """Stable signed 32-bit key of a table's write lock (crc32; collisions only serialise)."""
    value = zlib.crc32(f"sink:{qualified}".encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def _lock_sql(qualified: str, *, exclusive: bool) -> str:
    """The statement taking a table's transaction-scoped write lock."""
    kind = "" if exclusive else "_shared"
    return f"SELECT pg_advisory_xact_lock{kind}({LOCK_SPACE}, {_lock_key(qualified)})"


class _Connection(asyncpg.Connection):
    """A pool connection that remembers which staging tables its session holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.m2p_staged: set[str] = set()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (one round trip per batch saved): the sink
    leaves no session state behind but its staging tables, which it wants to keep, and
    transaction-scoped advisory locks, which end with the transaction."""


ABORT_SECONDS = 5.0
"""At most this long for the rollback of a staged batch (:meth:`Staged.abort`), which
runs shielded from cancellation; past it the connection is closed (a rollback too)."""


class _Fallback(Exception):
    """The direct path cannot take this batch; use the staged one."""


DIRECT_PAUSE = 16
"""At most this many batches of a namespace skip the direct path after it had to fall
back: 0 after a first fallback (a change stream insert may have landed a key of the
chunk first), then 1, 3, 7, 15 while fallbacks follow each other (a re-copy into known
keys); a direct batch that lands starts the count again."""


class _Known:
    """What the sink has ensured for one namespace."""

    __slots__ = ("direct_misses", "direct_pause", "mapper", "shapes", "sql")

    def __init__(self, mapper: Mapper, shapes: tuple[TableShape, ...],
                 nsql: statements.NamespaceSql) -> None:
        self.mapper = mapper
        self.shapes = shapes
        self.sql = nsql
        self.direct_pause = 0
        self.direct_misses = 0

    def direct_fell_back(self) -> None:
        self.direct_pause = min(DIRECT_PAUSE, (1 << self.direct_misses) - 1)
        self.direct_misses += 1


def _wants_direct(known: _Known, p: NamespacePlan) -> bool:
    """Whether the upserts of ``p`` try the direct path (:meth:`Sink._direct`): a batch
    whose changes of the namespace are all backfill rows or stream inserts, unless the
    path is paused after fallbacks (:data:`DIRECT_PAUSE`)."""
    if p.deletes or not p.all_new or known.direct_pause > 0:
        known.direct_pause = max(known.direct_pause - 1, 0)
        return False
    return True


class Staged:
    """A batch whose transaction is open with its staging COPY done (:meth:`Sink.stage`);
    :meth:`commit` writes the rest under the locks and commits, :meth:`abort` rolls it
    back. Either releases the connection; both may be called again (no effect)."""

    def __init__(self, sink: Sink, batch: Batch, plan: Plan) -> None:
        self._sink = sink
        self.batch = batch
        self.plan = plan
        self.conn: Any = None
        self.tx: Any = None
        self.work: list[tuple[_Known, NamespacePlan]] = []
        self.direct: set[Namespace] = set()
        self.rolled_back = False

    async def commit(self) -> ApplyResult:
        conn = self.conn
        if conn is None:
            if self.rolled_back:  # a result now would claim what never committed
                raise InvariantError(f"{_describe(self.batch)} was rolled back")
            return self.plan.result
        try:
            with target_errors(lambda: f"applying {_describe(self.batch)}"):
                await self._sink._write_locked(conn, self)
        finally:
            await self.abort()
        return self.plan.result

    async def abort(self) -> None:
        """Roll back (unless committed) and give the connection back to the pool."""
        conn, self.conn = self.conn, None
        tx, self.tx = self.tx, None
        if conn is None:
            return
        self.rolled_back = tx is not None  # committed: tx is None
        self._sink._open.discard(self)
        with anyio.CancelScope(shield=True):
            try:
                # A connection lost meanwhile was handed back to the pool by asyncpg
                # already (its proxy then refuses every call).
                if tx is not None and not conn.is_closed():
                    # Shielded, so bounded here: a server that stops answering must not
                    # hold the caller past its deadline. Closing the session rolls back.
                    with anyio.move_on_after(ABORT_SECONDS) as waited:
                        await tx.rollback()
                    if waited.cancelled_caught:
                        conn.terminate()
            except Exception:
                with contextlib.suppress(Exception):
                    conn.terminate()  # state unknown: the pool opens a new one
            finally:
                await self._sink._pool.release(conn)  # no effect when handed back


class Sink:
    """Writes batches to PostgreSQL; see the module docstring for the mechanism."""

    def __init__(self, pool: asyncpg.Pool, control: psycopg.AsyncConnection[Any], dsn: str,
                 control_schema: str, mapper_for: MapperFor) -> None:
        self._pool = pool
        self._dsn = dsn
        self._control = control
        self._schema = control_schema
        self._mapper_for = mapper_for
        self._known: dict[Namespace, _Known] = {}
        self._next_index = 0
        self._ddl_lock = anyio.Lock()  # one control connection: one DDL at a time
        self._open: set[Staged] = set()
        """Batches staged and neither committed nor rolled back yet."""
        ctl = sql.Identifier(control_schema)
        self._sql_checkpoint = sql.SQL(
            "INSERT INTO {}.checkpoints AS c (stream, resume_token, cluster_time, updated_at)"
            " VALUES ($1, $2, $3, now()) ON CONFLICT (stream) DO UPDATE SET"
            " resume_token = EXCLUDED.resume_token, cluster_time = EXCLUDED.cluster_time,"
            " updated_at = now() WHERE c.cluster_time <= EXCLUDED.cluster_time"
        ).format(ctl).as_string(None)
        self._sql_chunk = sql.SQL(
            "UPDATE {}.chunks SET status = 'done', updated_at = now() WHERE id = $1"
        ).format(ctl).as_string(None)
        self._sql_letter = sql.SQL(
            "INSERT INTO {}.dead_letters (namespace, id_bson, version, raw, reason,"
            " resolved_at) VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN now() END)"
        ).format(ctl).as_string(None)
        self._sql_load = sql.SQL(
            "SELECT stream, resume_token, cluster_time FROM {}.checkpoints WHERE stream = $1"
        ).format(ctl).as_string(None)
        self._sql_readers = readers.build(control_schema)
        self._sql_applied = sql.SQL("SELECT max(cluster_time) FROM {}.checkpoints"
                                    ).format(ctl).as_string(None)
        self._sql_fence = sql.SQL(
            "SELECT cluster_time FROM {}.checkpoints WHERE stream = $1 FOR UPDATE"
        ).format(ctl).as_string(None)

    @classmethod
    async def open(cls, dsn: str, control_schema: str, mapper_for: MapperFor, *,
                   min_size: int = 1, max_size: int = 4) -> Self:
        """Migrate the control schema, then open the data-plane pool."""
        with target_errors("connecting the control plane"):
            control = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await migrate(control, control_schema)
            pool = await asyncpg.create_pool(
                min_size=min_size, max_size=max_size, connection_class=_Connection,
                reset=_keep_session, **asyncpg_params(dsn))
        except BaseException as exc:
            await control.close()
            if isinstance(exc, Exception) and is_retriable(exc):
                raise TargetUnavailable("opening the sink") from exc
            raise
        return cls(pool, control, dsn, control_schema, mapper_for)

    @property
    def pool(self) -> asyncpg.Pool:
        """The data-plane pool (the tailer keeps its stream state rows through it)."""
        return self._pool

    @property
    def control_schema(self) -> str:
        return self._schema

    async def close(self) -> None:
        """Roll back batches still staged (their callers are gone), close the pools."""
        for staged in list(self._open):
            await staged.abort()
        try:
            await self._pool.close()
        finally:
            await self._control.close()

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        with target_errors(f"loading checkpoint {stream!r}"):
            row = await self._pool.fetchrow(self._sql_load, stream)
        if row is None:
            return None
        return Checkpoint(row["stream"], row["resume_token"], row["cluster_time"])

    # -- read leases (cdc.sink.readers) -------------------------------------------------
    async def open_reader(self, namespace: Namespace, holder: str, lease_seconds: float
                          ) -> int:
        """Open a read lease on ``namespace``, committed when this returns: take it
        before the read's label, name it in every batch of what was read
        (:attr:`Batch.reader`), close it after the last one. ``holder`` names the
        process for operators; the lease expires ``lease_seconds`` after its last
        renewal (each batch under it renews it; the reader also calls :meth:`renew_reader`
        while it reads)."""
        with target_errors(f"opening a read lease on {namespace}"):
            reader: int = await self._pool.fetchval(self._sql_readers.open, str(namespace),
                                                    holder, float(lease_seconds))
        return reader

    async def applied_time(self, namespace: Namespace) -> int | None:
        """The newest cluster time (packed) a stream has committed, read once every
        batch in flight on ``namespace``'s table has committed (its shared lock): take
        it after :meth:`open_reader` and read the label at or after it, so the label
        covers every delete applied without the lease even where the source's majority
        snapshot lags (a new primary after an election)."""
        known = await self._ensure(namespace)
        with target_errors(f"reading what is applied to {namespace}"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_lock_sql(known.sql.root.qualified, exclusive=False))
                applied: int | None = await conn.fetchval(self._sql_applied)
        return applied

    async def renew_reader(self, reader: int) -> bool:
        """Extend a live read lease; False if it had expired (the read must start over)."""
        with target_errors("renewing a read lease"):
            status = await self._pool.execute(self._sql_readers.renew, reader)
        return bool(status == "UPDATE 1")

    async def close_reader(self, reader: int) -> None:
        """Remove a read lease (its reader has written its last batch, or gave up)."""
        with target_errors("closing a read lease"):
            await self._pool.execute(self._sql_readers.close, reader)

    async def _ensure(self, ns: Namespace) -> _Known:
        known = self._known.get(ns)
        if known is not None and known.shapes == known.mapper.tables():
            return known
        async with self._ddl_lock:
            return await self._ensure_locked(ns)

    async def _ensure_locked(self, ns: Namespace) -> _Known:
        known = self._known.get(ns)
        mapper = known.mapper if known is not None else self._mapper_for(ns)
        shapes = mapper.tables()
        if known is not None and known.shapes == shapes:
            return known
        with target_errors(f"creating tables of {ns}"):
            if self._control.closed or self._control.broken:
                self._control = await psycopg.AsyncConnection.connect(self._dsn,
                                                                      autocommit=True)
            await ddl.ensure_tables(self._control, shapes)
        # A new index per layout: sessions may hold staging tables of an older layout.
        nsql = statements.build(self._next_index, shapes, self._schema)
        self._next_index += 1
        known = self._known[ns] = _Known(mapper, shapes, nsql)
        return known

    def _mapper_of(self, ns: Namespace) -> Mapper:
        known = self._known.get(ns)
        return known.mapper if known is not None else self._mapper_for(ns)

    async def apply(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` atomically (rows, dead letters, checkpoint, chunk)."""
        staged = await self.stage(batch)
        return await staged.commit()

    async def stage(self, batch: Batch) -> Staged:
        """The first part of :meth:`apply`: open the batch's transaction on a connection
        of its own and COPY what needs no lock (upserts bound for the staging tables);
        :meth:`Staged.commit` does the rest. A caller applying batches in order may stage
        the next batch while the previous one commits (the COPY overlaps its merge), as
        long as it commits them in order and aborts the next when the previous fails."""
        # Ensure the layout of every namespace first so mapping uses the cached mapper.
        for ns in _namespaces(batch):
            await self._ensure(ns)
        plan = plan_batch(batch, self._mapper_of)
        if batch.reader is None and plan.backfill:
            raise InvariantError(f"{_describe(batch)} has backfill changes but no read"
                                 " lease (Batch.reader)")
        staged = Staged(self, batch, plan)
        if (not batch.changes and batch.checkpoint is None and batch.chunk_id is None
                and not batch.letters):
            return staged
        with target_errors(lambda: f"applying {_describe(batch)}"):
            conn = await self._pool.acquire()
            staged.conn = conn
            self._open.add(staged)
            try:
                await self._open_write(conn, staged)
            except BaseException:
                await staged.abort()
                raise
        return staged

    async def _direct(self, conn: Any, known: _Known, p: NamespacePlan,
                      dead: list[DeadLetter], result: ApplyResult) -> None:
        """Upserts into keys the target has never seen: COPY straight into the tables.

        Tried only for a batch whose changes of this namespace are all upserts from the
        backfill or stream inserts (:attr:`~cdc.batch.Change.fresh`;
        :func:`_wants_direct`). A row COPYed this way wins whatever its origin, as
        nothing is stored for its key: no row (the primary key) and no tombstone (the
        probe; tombstones are written under the table's exclusive lock, and this batch
        holds it shared). Inside a savepoint the rows are COPYed into the target
        tables; the primary key rejects any key that has a row (then the savepoint is
        rolled back), and a probe rejects keys with a tombstone. Either way the batch
        then goes the staged, version-guarded way: streams from the C path are written
        again in their staging form (cheap), rows the Python path mapped are reused,
        never mapped twice. Fallbacks that follow
        each other turn the direct path off for a growing number of batches (see
        :data:`DIRECT_PAUSE`; a resync re-copies known keys).
        """
        nsql = known.sql
        fast = p.fast_rows(staged=False)
        if fast is not None:
            try:
                async with conn.transaction():  # a savepoint
                    root = nsql.root
                    await _copy_stream(conn, root.schema, root.name, fast.root,
                                       nsql.target_columns)
                    for child, data in zip(nsql.children, fast.children, strict=True):
                        await _copy_stream(conn, child.shape.schema, child.shape.name, data,
                                           child.columns)
                    keys = fast.keys
                    if await conn.fetchval(nsql.count_tombstones, nsql.root.qualified, keys,
                                           min(keys), max(keys)):
                        raise _Fallback
            except (_Fallback, asyncpg.exceptions.UniqueViolationError):
                known.direct_fell_back()
                p.staged_upserts = 0
                await self._stage(conn, nsql, p, dead, result)
            else:
                _landed_direct(known, p, result)
            return
        taken: list[tuple[Any, ...]] = []
        source = p.root_records(dead, result, direct=True)

        def rows() -> Iterator[tuple[Any, ...]]:
            for record in source:
                taken.append(record)
                yield record

        try:
            async with conn.transaction():  # a savepoint
                await conn.copy_records_to_table(
                    nsql.root.name, schema_name=nsql.root.schema, records=rows(),
                    columns=nsql.target_columns)
                for child in nsql.children:
                    child_rows = p.child_records.get(child.shape.name)
                    if child_rows:
                        await conn.copy_records_to_table(
                            child.shape.name, schema_name=child.shape.schema,
                            records=child_rows, columns=child.columns)
                if taken:
                    keys = [r[0] for r in taken]
                    if await conn.fetchval(nsql.count_tombstones, nsql.root.qualified, keys,
                                           min(keys), max(keys)):
                        raise _Fallback
        except (_Fallback, asyncpg.exceptions.UniqueViolationError):
            known.direct_fell_back()
            taken.extend(source)  # map the rest, once
            await _stage_records(conn, nsql, p, p.staging_records(taken))
        else:
            _landed_direct(known, p, result)

    async def _stage(self, conn: Any, nsql: statements.NamespaceSql, p: NamespacePlan,
                     dead: list[DeadLetter], result: ApplyResult) -> None:
        """COPY the upserts of ``p`` into the namespace's staging tables."""
        fast = p.fast_rows(staged=True)
        if fast is not None:
            await _copy_stream(conn, "pg_temp", nsql.stage, fast.root, nsql.stage_columns)
            for child, data in zip(nsql.children, fast.children, strict=True):
                await _copy_stream(conn, "pg_temp", child.stage, data, child.columns)
            return
        # Mapping runs inside this COPY, overlapping the server's parsing.
        await _stage_records(conn, nsql, p, p.root_records(dead, result))

    async def _open_write(self, conn: Any, staged: Staged) -> None:
        """Begin the batch's transaction and COPY the upserts that take the staging
        tables (those the direct path may take need the table's lock first)."""
        plan = staged.plan
        work = staged.work = [(self._known[ns], p) for ns, p in sorted(plan.namespaces.items())]
        # Staging tables live for the session: created outside the transaction (a
        # rolled-back batch does not take them away), once per connection.
        staged_tables: set[str] = conn.m2p_staged
        missing = [k.sql for k, _ in work if k.sql.stage not in staged_tables]
        if missing or not staged_tables:
            await conn.execute(";".join([statements.COMMON_STAGE_DDL]
                                        + [m.stage_ddl for m in missing]))
            staged_tables.add("")
            staged_tables.update(m.stage for m in missing)
        # READ COMMITTED whatever the server's default: each statement's snapshot is taken
        # after the advisory locks were granted (the lease and delete checks rely on it).
        staged.tx = conn.transaction(isolation="read_committed")
        await staged.tx.start()
        for known, p in work:
            if not p.upserts:
                continue
            if _wants_direct(known, p):
                staged.direct.add(p.namespace)
                continue
            await self._stage(conn, known.sql, p, plan.dead_letters, plan.result)
            if p.losers:
                await conn.execute(known.sql.drop_staged, p.losers)

    async def _write_locked(self, conn: Any, staged: Staged) -> None:
        """The rest of the batch's transaction, under its locks; commits."""
        batch, work = staged.batch, staged.work
        dead, result = staged.plan.dead_letters, staged.plan.result
        cp = batch.checkpoint
        if cp is not None and batch.after is not None:
            # The stream's row lock orders its appliers; one that is behind what
            # another committed writes nothing (its events could be older than a
            # delete applied without a tombstone, see cdc.sink.readers). Nor does a
            # batch whose predecessor is not committed (staged batches commit in
            # order; this holds even if one did not).
            stored = await conn.fetchval(self._sql_fence, cp.stream)
            if stored is not None and stored > batch.after:
                raise StreamFenced(f"stream {cp.stream!r} was applied past this batch's"
                                   " start by another applier")
            if stored is not None and stored < batch.after:
                raise StreamFenced(f"stream {cp.stream!r}: the batch before this one is"
                                   " not committed")
        locks: dict[str, bool] = {}
        for known, p in work:
            table = known.sql.root.qualified
            locks[table] = locks.get(table, False) or bool(p.deletes)
        # Sorted by lock key: concurrent batches take their locks in one order.
        script = [_lock_sql(table, exclusive=exclusive) for table, exclusive
                  in sorted(locks.items(), key=lambda item: _lock_key(item[0]))]
        if batch.reader is not None:
            # After the locks: a delete batch of these tables has committed or waits.
            script.append(self._sql_readers.renew_literal(batch.reader))
        if script:
            status = await conn.execute(";".join(script))
            if batch.reader is not None and status != "UPDATE 1":
                raise ReadLeaseLost(f"the read lease of {_describe(batch)} has expired")
        deleting = [str(p.namespace) for _, p in work if p.staged_deletes]
        # Read after the locks were granted (a statement of its own, so a snapshot of
        # its own): a lease renewed by a write that committed before is seen live.
        tombstoned: set[str] = (
            {r[0] for r in await conn.fetch(self._sql_readers.live, deleting)}
            if deleting else set())
        for known, p in work:
            nsql = known.sql
            table = nsql.root.qualified
            if p.namespace in staged.direct:
                await self._direct(conn, known, p, dead, result)
                if p.losers:
                    await conn.execute(nsql.drop_staged, p.losers)
            if p.staged_deletes:
                n = 0
                for keys, versions, stream in p.delete_arrays():
                    n += await (conn.fetchval(nsql.delete, table, keys, versions, stream)
                                if str(p.namespace) in tombstoned
                                else conn.fetchval(nsql.delete_rows, keys, versions,
                                                   stream))
                counts = result.of(p.namespace, Op.DELETE)
                counts.applied += n
                counts.skipped += p.staged_deletes - n
            if p.staged_upserts and not p.direct:
                n = await conn.fetchval(nsql.upsert, table)
                counts = result.of(p.namespace, Op.UPSERT)
                counts.applied += n
                counts.skipped += p.staged_upserts - n
                if n and nsql.children:
                    await conn.execute(nsql.drop_children)
                    await conn.execute(nsql.insert_children)
        if dead:
            await conn.copy_records_to_table(
                "dead_letters", schema_name=self._schema,
                records=[(d.namespace, d.id_bson, d.version, d.raw, d.reason)
                         for d in dead],
                columns=("namespace", "id_bson", "version", "raw", "reason"))
        if batch.letters:
            await conn.executemany(self._sql_letter, [
                (x.namespace, x.id_bson, x.version, x.raw, x.reason, x.resolved)
                for x in batch.letters])
        if cp is not None:
            await conn.execute(self._sql_checkpoint, cp.stream, cp.resume_token,
                               cp.cluster_time)
        if batch.chunk_id is not None:
            status = await conn.execute(self._sql_chunk, batch.chunk_id)
            if status != "UPDATE 1":
                raise InvariantError(f"backfill chunk {batch.chunk_id} does not exist")

        await staged.tx.commit()
        staged.tx = None

_EMPTY_STREAM = 19 + 2
"""Size of a binary COPY stream without rows: header (19 bytes) and trailer (2)."""


_COPY_PIECE = 1 << 20
"""Bytes per CopyData message for a stream larger than this."""


async def _pieces(view: memoryview) -> AsyncIterator[memoryview]:
    for at in range(0, len(view), _COPY_PIECE):
        yield view[at:at + _COPY_PIECE]


async def _copy_stream(conn: Any, schema: str, table: str, data: bytes,
                       columns: tuple[str, ...]) -> None:
    """COPY a complete binary COPY stream into ``schema.table``; a stream without rows
    costs no round trip."""
    if len(data) <= _EMPTY_STREAM:
        return
    view = memoryview(data)  # asyncpg would take bytes for a file name
    # asyncpg sends a buffer as one CopyData message, and PostgreSQL refuses a message
    # of 1 GB or more: a large stream goes in pieces.
    source: Any = view if len(view) <= _COPY_PIECE else _pieces(view)
    await conn.copy_to_table(table, schema_name=schema, source=source, columns=columns,
                             format="binary")


async def _stage_records(conn: Any, nsql: statements.NamespaceSql, p: NamespacePlan,
                         records: Iterable[tuple[Any, ...]]) -> None:
    """COPY root rows mapped in Python, and their child rows, into staging."""
    await conn.copy_records_to_table(nsql.stage, schema_name="pg_temp", records=records,
                                     columns=nsql.stage_columns)
    for child in nsql.children:
        rows = p.children_without_losers(child.shape.name)
        if rows:
            await conn.copy_records_to_table(child.stage, schema_name="pg_temp",
                                             records=rows, columns=child.columns)


def _landed_direct(known: _Known, p: NamespacePlan, result: ApplyResult) -> None:
    """Bookkeeping of upserts that went straight into the target."""
    p.direct = True
    known.direct_misses = 0
    result.of(p.namespace, Op.UPSERT).applied += p.staged_upserts


def _namespaces(batch: Batch) -> list[Namespace]:
    """The batch's namespaces, sorted (runs of one namespace object hash it once)."""
    seen: set[Namespace] = set()
    last: Namespace | None = None
    for change in batch.changes:
        if change.namespace is not last:
            last = change.namespace
            seen.add(last)
    return sorted(seen)


def _describe(batch: Batch) -> str:
    names = sorted({str(c.namespace) for c in batch.changes})
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"a batch of {len(batch.changes)} changes ({shown or 'no changes'})"
