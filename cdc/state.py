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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from psycopg import sql

from cdc.errors import TargetUnavailable, is_retriable
from cdc.types import ClusterTime, Namespace, Phase

MAIN_STREAM = "main"
"""The name of the daemon's change stream (its checkpoint and DDL decisions)."""


def stream_start_key(stream: str) -> str:
    """``stream_start`` for the main stream, ``stream_start:<name>`` for others."""
    return "stream_start" if stream == MAIN_STREAM else f"stream_start:{stream}"


def ddl_key(stream: str, what: str) -> str:
    """The key of a DDL decision of ``stream`` about ``what`` (a namespace or ``db.*``)."""
    return f"ddl:{stream}:{what}"


@dataclass
class DdlDecisions:
    """What the tailer decided under the ``mark``/``follow`` policies, as persisted.

    ``aliases`` maps a collection's name after a followed rename to the namespace whose
    table receives its documents (the name it had when the migration first saw it;
    ``renamed_at`` orders the renames). ``marked`` namespaces and ``marked_dbs``
    receive nothing more."""

    aliases: dict[Namespace, Namespace] = field(default_factory=dict)
    renamed_at: dict[Namespace, int] = field(default_factory=dict)
    marked: set[Namespace] = field(default_factory=set)
    marked_dbs: set[str] = field(default_factory=set)

    def target(self, ns: Namespace) -> Namespace | None:
        """The namespace whose table receives the documents of collection ``ns`` now;
        ``None`` when its table is marked, or when ``ns`` is :meth:`displaced`."""
        target = self.aliases.get(ns)
        if target is None:
            if self.displaced(ns):
                return None
            target = ns
        return self._unless_marked(target)

    def displaced(self, ns: Namespace) -> bool:
        """Whether ``ns`` names a collection created after the one of that name was
        renamed away under ``follow``: the renamed collection feeds ``ns``'s table, and
        two collections feeding one table would mix their documents, so this one feeds
        nothing (it needs a mapping of its own)."""
        return ns not in self.aliases and ns in self.aliases.values()

    def table_of(self, name: Namespace) -> Namespace | None:
        """The namespace whose table an operator means by ``name``: the table itself
        when a renamed collection feeds it (``a`` after ``a → b``), else the table the
        collection ``name`` feeds (``b`` means ``a``'s table); ``None`` when marked."""
        return self._unless_marked(
            name if name in self.aliases.values() else self.aliases.get(name, name))

    def _unless_marked(self, target: Namespace) -> Namespace | None:
        return None if target in self.marked or target.db in self.marked_dbs else target

    def tables(self, collections: Iterable[Namespace]) -> list[Namespace]:
        """The namespaces whose tables ``collections`` (what the include patterns find
        now) feed, with the tables renamed collections feed, minus marked ones."""
        targets = {self.target(ns) for ns in [*collections, *self.aliases]}
        return sorted(t for t in targets if t is not None)

    def merge(self, other: DdlDecisions) -> None:
        """Add ``other``'s decisions to these."""
        self.aliases.update(other.aliases)
        self.renamed_at.update(other.renamed_at)
        self.marked.update(other.marked)
        self.marked_dbs.update(other.marked_dbs)

    def source(self, target: Namespace) -> Namespace:
        """Where the documents of ``target``'s table live now: the name of its latest
        followed rename, or ``target`` itself."""
        names = [ns for ns, to in self.aliases.items() if to == target]
        return max(names, key=lambda ns: self.renamed_at.get(ns, 0)) if names else target


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

    async def ddl_decisions(self, stream: str) -> DdlDecisions:
        """The DDL decisions of ``stream`` persisted so far."""
        found = DdlDecisions()
        for value in (await self.with_prefix(ddl_key(stream, ""))).values():
            if value.get("marked_db"):
                found.marked_dbs.add(str(value["marked_db"]))
            if value.get("marked"):
                found.marked.add(Namespace.parse(str(value["marked"])))
            if value.get("alias_from") and value.get("alias_to"):
                name = Namespace.parse(str(value["alias_from"]))
                found.aliases[name] = Namespace.parse(str(value["alias_to"]))
                found.renamed_at[name] = int(value.get("cluster_time") or 0)
        return found

    def locator(self, stream: str) -> Callable[[Namespace], Awaitable[Namespace]]:
        """Where the documents of a namespace's table live now, by ``stream``'s decisions
        as persisted at each call (:meth:`DdlDecisions.source`): a backfill's ``locate``."""

        async def locate(ns: Namespace) -> Namespace:
            return (await self.ddl_decisions(stream)).source(ns)

        return locate

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
