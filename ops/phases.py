"""The phase machine of a migration: init → backfilling → catching_up → in_sync.

Mechanism: the phase lives in the control schema's singleton ``phase`` row (so every
daemon sharing the schema, and a restarted one, sees it) and in the
``mongo2pg_phase{phase="…"}`` gauge, which is 1 for the current phase and 0 for every
other (one series per phase, so Grafana can show a state timeline and alert on
``mongo2pg_phase{phase="resync_required"} == 1``).

Transitions (DESIGN §4), decided by :func:`next_phase` (pure) from facts the daemon
observes — backfill done or not, the stream's lag, history lost:

* ``init`` → ``backfilling`` once the change stream is open and its start recorded;
* ``backfilling`` → ``catching_up`` when every chunk is done;
* ``catching_up`` → ``in_sync`` when the lag is at or below the threshold;
  ``in_sync`` → ``catching_up`` when it exceeds twice the threshold (hysteresis, so a
  lag hovering at the threshold does not flap);
* any of these → ``resync_required`` when the stream lost its history (code 286);
  ``resync_required`` → ``backfilling`` once the stream was reopened fresh and the
  affected namespaces are being copied again.

Phases owned by cutover (``cut_over``, ``rolled_back``, ``finalized``) are never left by
this machine. (The design also asks for a clean verification before ``in_sync``;
verification is not wired into this daemon yet.)
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
from prometheus_client import Gauge
from psycopg import sql

from cdc.errors import InvariantError, target_errors
from cdc.types import Phase

PHASE = Gauge("mongo2pg_phase",
              "Current migration phase: 1 for the phase label in force, 0 for the others.",
              ["phase"])

ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.INIT: frozenset({Phase.BACKFILLING, Phase.RESYNC_REQUIRED}),
    Phase.BACKFILLING: frozenset({Phase.CATCHING_UP, Phase.RESYNC_REQUIRED}),
    Phase.CATCHING_UP: frozenset({Phase.IN_SYNC, Phase.BACKFILLING, Phase.RESYNC_REQUIRED}),
    Phase.IN_SYNC: frozenset({Phase.CATCHING_UP, Phase.BACKFILLING, Phase.RESYNC_REQUIRED}),
    Phase.RESYNC_REQUIRED: frozenset({Phase.BACKFILLING}),
    Phase.CUT_OVER: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.FINALIZED: frozenset(),
}
MANAGED = frozenset({Phase.INIT, Phase.BACKFILLING, Phase.CATCHING_UP, Phase.IN_SYNC,
                     Phase.RESYNC_REQUIRED})


def next_phase(current: Phase, *, stream_started: bool, backfill_done: bool,
               lag_seconds: float | None, threshold: float, history_lost: bool) -> Phase:
    """The phase the facts call for (``current`` when nothing changes)."""
    if current not in MANAGED:
        return current
    if history_lost:
        return Phase.RESYNC_REQUIRED
    if current is Phase.RESYNC_REQUIRED:
        return Phase.BACKFILLING if stream_started else current
    if current is Phase.INIT:
        return Phase.BACKFILLING if stream_started else current
    if current is Phase.BACKFILLING:
        return Phase.CATCHING_UP if backfill_done else current
    if not backfill_done:
        return Phase.BACKFILLING
    if current is Phase.CATCHING_UP:
        if lag_seconds is not None and lag_seconds <= threshold:
            return Phase.IN_SYNC
        return current
    # in_sync
    if lag_seconds is not None and lag_seconds > 2 * threshold:
        return Phase.CATCHING_UP
    return current


def export(phase: Phase) -> None:
    for p in Phase:
        PHASE.labels(p.value).set(1 if p is phase else 0)


class PhaseMachine:
    """The persisted phase; :meth:`move` validates, writes and exports a transition."""

    def __init__(self, dsn: str, schema: str) -> None:
        self._dsn = dsn
        self._table = sql.Identifier(schema, "phase")
        self.current = Phase.INIT
        self.reason: str | None = None
        self._lock = anyio.Lock()

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        # A refused connection is transient: the daemon's lifecycle retries a phase move
        # while the server refuses connections.
        with target_errors("connecting for the phase"):
            return await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)

    async def load(self) -> Phase:
        async with await self._conn() as conn:
            cur = await conn.execute(sql.SQL("SELECT phase, reason FROM {}").format(self._table))
            row = await cur.fetchone()
        if row is not None:
            self.current = Phase(row[0])
            self.reason = row[1]
        else:
            await self._write(Phase.INIT, None)
        export(self.current)
        return self.current

    async def _write(self, phase: Phase, reason: str | None) -> None:
        # A connection cut mid-statement is transient too. The write may have landed:
        # writing it again is the same (the row is upserted).
        with target_errors("writing the phase"):
            async with await self._conn() as conn:
                await conn.execute(sql.SQL(
                    "INSERT INTO {} AS p (singleton, phase, reason, updated_at) "
                    "VALUES (true, %s, %s, now()) ON CONFLICT (singleton) DO UPDATE SET "
                    "phase = EXCLUDED.phase, reason = EXCLUDED.reason, updated_at = now()"
                ).format(self._table), (phase.value, reason))
        self.current, self.reason = phase, reason
        export(phase)

    async def move(self, phase: Phase, reason: str | None = None, *,
                   expect: Phase | None = None) -> bool:
        """Go to ``phase``; False when already there, or (compare-and-set) when the phase
        is no longer ``expect``; InvariantError when the transition is not allowed.
        Moves are serialised, so concurrent deciders never interleave their writes."""
        async with self._lock:
            if phase is self.current or (expect is not None and self.current is not expect):
                return False
            if phase not in ALLOWED[self.current]:
                raise InvariantError(f"phase {self.current} cannot move to {phase}")
            await self._write(phase, reason)
            return True
