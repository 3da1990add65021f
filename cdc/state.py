"""The tailer's facts in the control schema: stream_state, phase and dead letters.

Rare, small writes through an asyncpg pool (normally the sink's own, so the tailer
opens no connection of its own; the schema name is composed as an identifier with
:mod:`psycopg.sql`, never pasted): the cluster time the stream was first opened at
(``stream_start``, written *before* the tailer reports started, so backfill never
reads a chunk the stream could miss — DESIGN §3.2), DDL decisions taken under the
``mark``/``follow`` policies (so a restarted tailer keeps them), the ``resync_required``
phase after history loss, and dead letters for events too large to read. The tables
belong to the sink's migrations (the control schema contract in BRIEF.md).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from psycopg import sql

from cdc.errors import TargetUnavailable, is_retriable
from cdc.types import ClusterTime, Phase


def stream_start_key(stream: str) -> str:
    """``stream_start`` for the main stream, ``stream_start:<name>`` for others."""
    return "stream_start" if stream == "main" else f"stream_start:{stream}"


class StreamState:
    """Reads and writes the tailer's rows of the control schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "mongo2pg") -> None:
        self._pool = pool
        s = sql.Identifier(schema)

        def q(text: str) -> str:
            return sql.SQL(text).format(s=s).as_string(None)

        self._get = q("SELECT value::text FROM {s}.stream_state WHERE key = $1")
        self._put = q("INSERT INTO {s}.stream_state (key, value) VALUES ($1, $2::jsonb)"
                      " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        self._prefix = q("SELECT key, value::text FROM {s}.stream_state"
                         " WHERE starts_with(key, $1) ORDER BY key")
        self._phase = q("SELECT phase, reason FROM {s}.phase")
        self._set_phase = q(
            "INSERT INTO {s}.phase (singleton, phase, reason) VALUES (true, $1, $2)"
            " ON CONFLICT (singleton) DO UPDATE SET phase = EXCLUDED.phase,"
            " reason = EXCLUDED.reason, updated_at = now()")
        self._dead = q("INSERT INTO {s}.dead_letters (namespace, id_bson, version, raw, reason)"
                       " VALUES ($1, $2, $3, $4, $5) RETURNING id")
        self._resolve = q("UPDATE {s}.dead_letters SET resolved_at = now() WHERE id = $1")

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        # Only what may pass is wrapped as transient. An ``InterfaceError`` is retriable
        # only when a lost connection caused it (:func:`cdc.errors.is_retriable`); "pool
        # is closed" at shutdown is not, so a closing daemon stops instead of retrying.
        try:
            return list(await self._pool.fetch(query, *args))
        except Exception as exc:
            if is_retriable(exc):
                raise TargetUnavailable("control schema unreachable") from exc
            raise

    async def get(self, key: str) -> Any | None:
        rows = await self._fetch(self._get, key)
        return json.loads(rows[0][0]) if rows else None

    async def put(self, key: str, value: Any) -> None:
        await self._fetch(self._put, key, json.dumps(value))

    async def with_prefix(self, prefix: str) -> dict[str, Any]:
        rows = await self._fetch(self._prefix, prefix)
        return {str(r[0]): json.loads(r[1]) for r in rows}

    async def stream_start(self, stream: str) -> ClusterTime | None:
        value = await self.get(stream_start_key(stream))
        if not isinstance(value, dict) or "cluster_time" not in value:
            return None
        return ClusterTime.from_packed(int(value["cluster_time"]))

    async def set_stream_start(self, stream: str, at: ClusterTime) -> None:
        await self.put(stream_start_key(stream),
                       {"cluster_time": at.packed, "t": at.t, "i": at.i})

    async def phase(self) -> tuple[Phase, str | None] | None:
        rows = await self._fetch(self._phase)
        return (Phase(rows[0][0]), rows[0][1]) if rows else None

    async def set_phase(self, phase: Phase, reason: str | None = None) -> None:
        await self._fetch(self._set_phase, str(phase), reason)

    async def add_dead_letter(self, *, namespace: str, id_bson: bytes | None,
                              version: int | None, raw: bytes | None, reason: str) -> int:
        rows = await self._fetch(self._dead, namespace, id_bson, version, raw, reason)
        return int(rows[0][0])

    async def resolve_dead_letter(self, letter_id: int) -> None:
        await self._fetch(self._resolve, letter_id)
