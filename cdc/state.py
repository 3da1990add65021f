"""The tailer's facts in the control schema: stream_state, phase and dead letters.

Rare, small control-plane writes (psycopg, one short connection per call, statements
composed with :mod:`psycopg.sql` so the schema is an identifier): the cluster time the
stream was first opened at (``stream_start``, written *before* the tailer reports
started, so backfill never reads a chunk the stream could miss — DESIGN §3.2), DDL
decisions taken under the ``mark``/``follow`` policies (so a restarted tailer keeps
them), the ``resync_required`` phase after history loss, and dead letters for events
too large to read. The tables belong to the sink's migrations (BRIEF.md contract).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.errors import TargetUnavailable
from cdc.types import ClusterTime, Phase


def stream_start_key(stream: str) -> str:
    """``stream_start`` for the main stream, ``stream_start:<name>`` for others."""
    return "stream_start" if stream == "main" else f"stream_start:{stream}"


class StreamState:
    """Reads and writes the tailer's rows of the control schema."""

    def __init__(self, dsn: str, schema: str = "mongo2pg") -> None:
        self._dsn = dsn
        self._schema = sql.Identifier(schema)

    async def _run(self, query: sql.Composed, params: tuple[Any, ...] = ()
                   ) -> list[tuple[Any, ...]]:
        try:
            async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                cur = await conn.execute(query, params)
                return list(await cur.fetchall()) if cur.description else []
        except psycopg.OperationalError as exc:
            raise TargetUnavailable("control schema unreachable") from exc

    async def get(self, key: str) -> Any | None:
        rows = await self._run(sql.SQL("SELECT value FROM {}.stream_state WHERE key = %s")
                               .format(self._schema), (key,))
        return rows[0][0] if rows else None

    async def put(self, key: str, value: Any) -> None:
        await self._run(sql.SQL(
            "INSERT INTO {}.stream_state (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value").format(self._schema),
            (key, Jsonb(value)))

    async def with_prefix(self, prefix: str) -> dict[str, Any]:
        rows = await self._run(sql.SQL(
            "SELECT key, value FROM {}.stream_state WHERE starts_with(key, %s) ORDER BY key"
        ).format(self._schema), (prefix,))
        return {str(k): v for k, v in rows}

    async def stream_start(self, stream: str) -> ClusterTime | None:
        value = await self.get(stream_start_key(stream))
        if not isinstance(value, dict) or "cluster_time" not in value:
            return None
        return ClusterTime.from_packed(int(value["cluster_time"]))

    async def set_stream_start(self, stream: str, at: ClusterTime) -> None:
        await self.put(stream_start_key(stream),
                       {"cluster_time": at.packed, "t": at.t, "i": at.i})

    async def phase(self) -> tuple[Phase, str | None] | None:
        rows = await self._run(sql.SQL("SELECT phase, reason FROM {}.phase")
                               .format(self._schema))
        return (Phase(rows[0][0]), rows[0][1]) if rows else None

    async def set_phase(self, phase: Phase, reason: str | None = None) -> None:
        await self._run(sql.SQL(
            "INSERT INTO {}.phase (singleton, phase, reason) VALUES (true, %s, %s)"
            " ON CONFLICT (singleton) DO UPDATE SET phase = EXCLUDED.phase,"
            " reason = EXCLUDED.reason, updated_at = now()").format(self._schema),
            (str(phase), reason))

    async def add_dead_letter(self, *, namespace: str, id_bson: bytes | None,
                              version: int | None, raw: bytes | None, reason: str) -> int:
        rows = await self._run(sql.SQL(
            "INSERT INTO {}.dead_letters (namespace, id_bson, version, raw, reason)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id").format(self._schema),
            (namespace, id_bson, version, raw, reason))
        return int(rows[0][0])

    async def resolve_dead_letter(self, letter_id: int) -> None:
        await self._run(sql.SQL(
            "UPDATE {}.dead_letters SET resolved_at = now() WHERE id = %s"
        ).format(self._schema), (letter_id,))
