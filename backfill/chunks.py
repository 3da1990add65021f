"""The chunk table in the control schema: planning once, claiming with leases, progress.

Several processes may share one control schema, so every step is safe to race:

* planning a namespace takes a transaction-scoped advisory lock on it and inserts its
  chunks only if it has none, so exactly one plan per namespace ever exists;
* a worker claims a chunk with ``SELECT … FOR UPDATE SKIP LOCKED`` (pending chunks, or
  running ones whose lease has expired because their worker died) and sets itself as
  lease owner until ``now() + lease``; it renews the lease (and reports documents and
  bytes) while copying;
* the chunk becomes ``done`` in the sink's transaction that writes its last rows
  (``Batch.chunk_id``); a graceful stop hands an unfinished chunk back (``pending``).

A chunk copied twice (its lease expired while the first worker was still alive) is
harmless: the version guard makes the second copy a no-op or an equal overwrite.
This module uses psycopg (the control plane); statements are composed with
:mod:`psycopg.sql`, values always bound as parameters.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import msgspec
import psycopg
from psycopg import sql

from backfill.bsonorder import decode_bound, encode_bound
from backfill.planner import ChunkSpec, SizeEstimate
from cdc.errors import TargetUnavailable, target_errors
from cdc.types import Namespace


class ChunkRecord(msgspec.Struct, frozen=True):
    """A claimed chunk."""

    id: int
    namespace: Namespace
    seq: int
    lower: Any | None
    upper: Any | None
    attempts: int


class NamespaceStatus(msgspec.Struct, frozen=True):
    namespace: str
    total: int
    done: int
    running: int
    docs: int
    bytes: int
    estimated: int


def _estimate_key(namespace: Namespace) -> str:
    return f"backfill.estimate.{namespace}"


class ChunkStore:
    """Chunk bookkeeping over one autocommit psycopg connection (calls are serialized)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str, owner: str,
                 lease_seconds: float = 60.0, dsn: str | None = None):
        self.conn = conn
        self.dsn = dsn
        self.schema = schema
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._t = sql.Identifier(schema, "chunks")
        self._state = sql.Identifier(schema, "stream_state")
        self._reopen = anyio.Lock()
        """Workers share the connection: one of them reopens it, the others wait."""

    @classmethod
    async def connect(cls, dsn: str, schema: str, owner: str,
                      lease_seconds: float = 60.0) -> ChunkStore:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return cls(conn, schema, owner, lease_seconds, dsn)

    async def close(self) -> None:
        await self.conn.close()

    async def _exec(self, query: Any, params: Any = None) -> psycopg.AsyncCursor[Any]:
        """Run one statement; a lost connection is reopened on the next call. A reopen
        that fails (server down or refusing connections) is as transient as the loss
        (:func:`cdc.errors.target_errors`)."""
        with target_errors("using the chunk table"):
            if self.conn.closed and self.dsn:
                async with self._reopen:
                    if self.conn.closed:
                        self.conn = await psycopg.AsyncConnection.connect(
                            self.dsn, autocommit=True)
            return await self.conn.execute(query, params)

    async def is_planned(self, namespace: Namespace) -> bool:
        cur = await self._exec(
            sql.SQL("SELECT 1 FROM {} WHERE namespace = %s LIMIT 1").format(self._t),
            (str(namespace),))
        return await cur.fetchone() is not None

    async def plan_once(
        self,
        namespace: Namespace,
        planner: Callable[[], Awaitable[tuple[list[ChunkSpec], SizeEstimate]]],
    ) -> bool:
        """Insert the namespace's chunks unless it has some; True if this call planned.

        Runs on a connection of its own (when the store knows its DSN) so the planning
        transaction never swallows a concurrent claim made on the shared connection.
        """
        if await self.is_planned(namespace):
            return False
        try:
            conn = (await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                    if self.dsn else self.conn)
        except psycopg.OperationalError as exc:
            raise TargetUnavailable("control schema unreachable (planning)") from exc
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"mongo2pg.plan.{self.schema}.{namespace}",))
                cur = await conn.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE namespace = %s LIMIT 1").format(self._t),
                    (str(namespace),))
                if await cur.fetchone() is not None:
                    return False
                specs, estimate = await planner()
                async with conn.cursor() as ins:
                    await ins.executemany(
                        sql.SQL("INSERT INTO {} (namespace, seq, lower, upper) VALUES "
                                "(%s, %s, %s, %s)").format(self._t),
                        [(str(s.namespace), s.seq, encode_bound(s.lower),
                          encode_bound(s.upper)) for s in specs])
                await self._set_estimate(conn, namespace, estimate)
        except psycopg.OperationalError as exc:
            # A connection cut midway carries no SQLSTATE. Planning again is safe: a plan
            # whose commit landed is found, one that did not is made again.
            raise TargetUnavailable("control schema unreachable (planning)") from exc
        finally:
            if conn is not self.conn:
                await conn.close()
        return True

    async def _set_estimate(self, conn: psycopg.AsyncConnection[Any], namespace: Namespace,
                            estimate: SizeEstimate) -> None:
        await conn.execute(
            sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s::jsonb) ON CONFLICT (key) "
                    "DO UPDATE SET value = EXCLUDED.value").format(self._state),
            (_estimate_key(namespace),
             json.dumps({"documents": estimate.documents, "avg_bytes": estimate.avg_bytes})))

    async def get_fact(self, key: str) -> Any | None:
        """A value of ``stream_state`` (JSON), or None."""
        cur = await self._exec(
            sql.SQL("SELECT value FROM {} WHERE key = %s").format(self._state), (key,))
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def set_fact(self, key: str, value: Any) -> None:
        await self._exec(
            sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s::jsonb) ON CONFLICT (key) "
                    "DO UPDATE SET value = EXCLUDED.value").format(self._state),
            (key, json.dumps(value)))

    async def delete_fact(self, key: str) -> None:
        await self._exec(sql.SQL("DELETE FROM {} WHERE key = %s").format(self._state), (key,))

    async def stale_ids(self, schema: str, table: str, before: int, *, after: bytes = b"",
                        limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """``(_key, _id_bson)`` of target rows older than ``before``, in key order after
        ``after`` (keyset pagination); an absent table has none."""
        exists = await self._exec("SELECT to_regclass(%s)", (
            sql.Identifier(schema, table).as_string(self.conn),))
        row = await exists.fetchone()
        if row is None or row[0] is None:
            return []
        cur = await self._exec(
            sql.SQL("SELECT _key, _id_bson FROM {} WHERE _m2p_version < %s AND _key > %s "
                    "ORDER BY _key LIMIT %s").format(sql.Identifier(schema, table)),
            (before, after, limit))
        return [(bytes(r[0]), bytes(r[1])) for r in await cur.fetchall()]

    async def reset(self, namespaces: Sequence[Namespace]) -> None:
        """Forget the chunks of ``namespaces`` so they are planned and copied again."""
        if not namespaces:
            return
        await self._exec(
            sql.SQL("DELETE FROM {} WHERE namespace = ANY(%s)").format(self._t),
            ([str(n) for n in namespaces],))

    async def claim(self, namespaces: Sequence[Namespace] | None = None) -> ChunkRecord | None:
        """Take one pending chunk (or one whose lease expired); None when there is none."""
        names = [str(n) for n in namespaces] if namespaces is not None else None
        query = sql.SQL(
            "UPDATE {t} SET status = 'running', lease_owner = %(owner)s, "
            "lease_until = now() + make_interval(secs => %(lease)s), "
            "attempts = attempts + 1, updated_at = now() "
            "WHERE id = (SELECT id FROM {t} WHERE (status = 'pending' OR "
            "(status = 'running' AND lease_until < now())) "
            "AND (%(names)s::text[] IS NULL OR namespace = ANY(%(names)s::text[])) "
            "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            "RETURNING id, namespace, seq, lower, upper, attempts").format(t=self._t)
        cur = await self._exec(
            query, {"owner": self.owner, "lease": self.lease_seconds, "names": names})
        row = await cur.fetchone()
        if row is None:
            return None
        return ChunkRecord(row[0], Namespace.parse(row[1]), row[2], decode_bound(row[3]),
                           decode_bound(row[4]), row[5])

    async def renew(self, chunk_id: int, *, docs: int, nbytes: int,
                    read_started: int | None = None) -> bool:
        """Extend the lease and record progress; False if the chunk is no longer ours."""
        cur = await self._exec(
            sql.SQL("UPDATE {} SET lease_until = now() + make_interval(secs => %s), "
                    "docs = %s, bytes = %s, read_started = COALESCE(%s, read_started), "
                    "updated_at = now() WHERE id = %s AND lease_owner = %s "
                    "AND status = 'running'").format(self._t),
            (self.lease_seconds, docs, nbytes, read_started, chunk_id, self.owner))
        return cur.rowcount == 1

    async def exists(self, chunk_id: int) -> bool:
        cur = await self._exec(
            sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(self._t), (chunk_id,))
        return await cur.fetchone() is not None

    async def release(self, chunk_id: int) -> None:
        """Hand an unfinished chunk back to the pool (graceful stop)."""
        await self._exec(
            sql.SQL("UPDATE {} SET status = 'pending', lease_owner = NULL, lease_until = NULL, "
                    "updated_at = now() WHERE id = %s AND lease_owner = %s "
                    "AND status = 'running'").format(self._t),
            (chunk_id, self.owner))

    async def remaining(self, namespaces: Sequence[Namespace] | None = None) -> int:
        """Chunks not done yet (pending or running, in any process)."""
        names = [str(n) for n in namespaces] if namespaces is not None else None
        cur = await self._exec(
            sql.SQL("SELECT count(*) FROM {} WHERE status <> 'done' AND "
                    "(%(names)s::text[] IS NULL OR namespace = ANY(%(names)s::text[]))"
                    ).format(self._t), {"names": names})
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def status(self) -> list[NamespaceStatus]:
        """Per-namespace chunk counts, copied documents and bytes, planned estimate."""
        cur = await self._exec(
            sql.SQL("SELECT c.namespace, count(*), count(*) FILTER (WHERE c.status = 'done'), "
                    "count(*) FILTER (WHERE c.status = 'running'), COALESCE(sum(c.docs), 0), "
                    "COALESCE(sum(c.bytes), 0), "
                    "COALESCE(max((s.value->>'documents')::bigint), 0) "
                    "FROM {t} c LEFT JOIN {s} s ON s.key = 'backfill.estimate.' || c.namespace "
                    "GROUP BY c.namespace ORDER BY c.namespace").format(
                        t=self._t, s=self._state))
        return [NamespaceStatus(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]),
                                int(r[6]))
                for r in await cur.fetchall()]
