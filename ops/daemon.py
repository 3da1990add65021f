"""The daemon behind ``mongo2pg run``: the composition root wiring the stages together.

One root anyio task group runs everything; startup is ordered with ``tg.start``:

1. the metrics endpoint is bound (``/metrics``, ``/livez``, ``/readyz``);
2. the change stream is opened and its start time persisted (the tailer reports it);
3. only then the lifecycle task starts the backfill, so no chunk is read before the
   stream could see every later change (DESIGN §3.2).

The lifecycle task drives the phase machine (:mod:`ops.phases`): it moves ``init`` to
``backfilling``, copies every included collection (:mod:`backfill.worker`; several
processes sharing the control schema split the chunks), moves to ``catching_up`` when
no chunk is left, then watches the stream's lag for ``in_sync``. When the stream reports
history loss (:class:`cdc.errors.HistoryLostError`) the stream task sets
``resync_required``, stops the running backfill, and restarts the tailer with
``start_fresh``; the lifecycle task then waits for the new stream start, forgets the
chunks of every included namespace and copies them again (``backfilling`` →
``catching_up``): the version guard makes re-copying safe. Rows still older than the
new stream start after the re-copy belong to documents deleted during the lost window;
each is re-read by ``_id`` and deleted (or refreshed) through the sink.

SIGHUP re-reads the configuration and applies ``[backfill] throttle_docs_per_second``
and ``workers`` to the running copy (a throttle change takes effect at the next batch).

Signals: the first SIGTERM/SIGINT asks the backfill to stop after the batches being
written (unfinished chunks go back to the pool), then cancels the root scope — the
tailer commits each batch with its checkpoint in one transaction, so cancelling it
loses nothing — and the process exits 0. A second signal, or a drain longer than
``daemon.drain_timeout_seconds``, exits at once (code 1). The next start resumes from
the committed checkpoint and the chunk table.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec
import psycopg
from pymongo import AsyncMongoClient

from backfill.chunks import ChunkStore
from backfill.worker import Backfill, default_owner, expand_namespaces
from cdc.errors import ConfigError, HistoryLostError, Mongo2pgError, is_retriable
from cdc.mapping import resolve
from cdc.mapping.model import Mapper
from cdc.retry import call_with_retry
from cdc.sink import Sink
from cdc.state import MAIN_STREAM, StreamState
from cdc.stream import Tailer
from cdc.types import ZERO_TIME, ClusterTime, Namespace, Phase
from ops.config import Config
from ops.gctune import tune_gc
from ops.metrics import serve_metrics
from ops.phases import MANAGED, PhaseMachine, next_phase

log = logging.getLogger("mongo2pg.daemon")
SWEEP_KEY = "resync.sweep_before"


def run_daemon(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM; returns the process exit code. ``reload`` (the CLI passes one)
    re-reads the configuration on SIGHUP."""
    tune_gc()
    try:
        return anyio.run(Daemon(config, reload).run, backend="asyncio")
    except Exception as exc:
        leaves = _leaves(exc)
        for leaf in leaves:
            if isinstance(leaf, ConfigError):
                raise leaf from None  # the CLI prints one line, exit code 2
        log.error("daemon stopped on an error: %s",
                  ", ".join(type(e).__name__ for e in leaves), exc_info=exc)
        return 1


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups; task groups wrap what they raise."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


class Daemon:
    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reload = reload
        self.schema = config.target.control_schema
        self.exit_code = 0
        self.stopping = False
        self.metrics_port: int | None = None
        self.stream_start: ClusterTime = ZERO_TIME
        self.tailer: Tailer | None = None
        self.backfill: Backfill | None = None
        self._stream_ready = anyio.Event()
        self._resync = anyio.Event()
        self._backfill_idle = anyio.Event()
        self._backfill_idle.set()
        self._root: anyio.abc.TaskGroup | None = None
        show = config.daemon.progress
        self._tty = show == "on" or (show == "auto" and sys.stderr.isatty())
        self._last_log = 0.0

    def mapper_for(self, ns: Namespace) -> Mapper:
        return resolve(self.config.mapping, ns)

    # ---------------------------------------------------------------- run
    async def run(self) -> int:
        cfg = self.config
        self.client: AsyncMongoClient[Any] = AsyncMongoClient(cfg.source.uri, appname="mongo2pg")
        # A connection per backfill worker, two for the tailer (one batch commits while
        # the next is staged) and one for stream state and status reads.
        self.sink = await Sink.open(cfg.target.dsn, self.schema, self.mapper_for,
                                        max_size=max(1, cfg.backfill.workers) + 3)
        self.stream_state = StreamState(self.sink.pool, self.schema)
        self.store = await ChunkStore.connect(cfg.target.dsn, self.schema, default_owner(),
                                              cfg.backfill.lease_seconds)
        self.phases = PhaseMachine(cfg.target.dsn, self.schema)
        try:
            await self.phases.load()
            async with anyio.create_task_group() as tg:
                self._root = tg
                tg.start_soon(self._signals)
                self.metrics_port = await tg.start(
                    serve_metrics, cfg.metrics.host, cfg.metrics.port, self.ready)
                await tg.start(self._stream)
                tg.start_soon(self._lifecycle)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.store.close()
                await self.sink.close()
                await self.client.close()
        log.info("daemon stopped", extra={"fields": {"exit_code": self.exit_code}})
        return self.exit_code

    # ---------------------------------------------------------------- readiness
    async def ready(self) -> tuple[bool, str]:
        if self.phases.current is Phase.RESYNC_REQUIRED:
            return False, "phase resync_required"
        try:
            await self.client.admin.command("ping")
        except Exception:
            return False, "MongoDB unreachable"
        try:
            async with await psycopg.AsyncConnection.connect(
                    self.config.target.dsn, connect_timeout=3) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False, "PostgreSQL unreachable"
        return True, "ok"

    # ---------------------------------------------------------------- signals
    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP
                                        ) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload_backfill_settings()
                    continue
                if self.stopping:
                    log.warning("second signal: exiting at once")
                    os._exit(1)
                self.stopping = True
                log.info("stopping: draining current batches",
                         extra={"fields": {"signal": signal.Signals(signum).name}})
                assert self._root is not None
                self._root.start_soon(self._drain)

    def reload_backfill_settings(self) -> None:
        """SIGHUP: apply the file's backfill throttle and worker count to the running copy."""
        if self._reload is None:
            return
        try:
            fresh = self._reload()
        except Mongo2pgError as exc:
            log.error("configuration not reloaded: %s", type(exc).__name__)
            return
        self.config = msgspec.structs.replace(self.config, backfill=fresh.backfill)
        if self.backfill is not None:
            self.backfill.throttle.set_rate(fresh.backfill.throttle_docs_per_second)
            self.backfill.set_workers(fresh.backfill.workers)
        log.info("backfill settings reloaded", extra={"fields": {
            "throttle_docs_per_second": fresh.backfill.throttle_docs_per_second,
            "workers": fresh.backfill.workers}})

    async def _drain(self) -> None:
        if self.backfill is not None:
            self.backfill.request_stop()
        with anyio.move_on_after(self.config.daemon.drain_timeout_seconds) as scope:
            await self._backfill_idle.wait()
        if scope.cancelled_caught:
            log.error("drain timed out: exiting at once")
            os._exit(1)
        assert self._root is not None
        self._root.cancel_scope.cancel()

    # ---------------------------------------------------------------- stream
    async def _stream(self, *, task_status: anyio.abc.TaskStatus[ClusterTime]
                      = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        fresh = self.phases.current is Phase.RESYNC_REQUIRED
        reported = False
        while True:
            tailer = Tailer(client=self.client, sink=self.sink, include=list(cfg.include),
                            config=cfg.stream, start_fresh=fresh, stream_name=MAIN_STREAM)
            self.tailer = tailer
            try:
                async with anyio.create_task_group() as tg:
                    self.stream_start = await tg.start(tailer.run)
                    self._stream_ready.set()
                    if not reported:
                        reported = True
                        task_status.started(self.stream_start)
            except* HistoryLostError:
                log.error("change stream lost its history: copying everything again")
                self._stream_ready = anyio.Event()
                if self.phases.current in MANAGED:
                    # Persisted before the fresh stream starts (a restart must re-copy
                    # too); a transient failure is retried, not the end of the daemon.
                    await call_with_retry(cfg.stream.retry, functools.partial(
                        self.phases.move, Phase.RESYNC_REQUIRED, "change stream history lost"),
                        lambda exc, n: log.warning("phase not written; retrying", extra={
                            "fields": {"error": type(exc).__name__, "attempt": n}}))
                if self.backfill is not None:
                    self.backfill.request_stop()
                self._resync.set()
                fresh = True

    # ---------------------------------------------------------------- lifecycle
    async def _namespaces(self) -> list[Namespace]:
        """The namespaces whose tables the backfill fills: each included collection
        through the stream's DDL decisions — a collection renamed under ``follow`` feeds
        the table of its first name (and is read from its new name), a marked
        one feeds nothing."""
        decisions = await self.stream_state.ddl_decisions(MAIN_STREAM)
        return decisions.tables(await expand_namespaces(self.client, self.config.include))


    async def _lifecycle(self) -> None:
        """Drive the phases; a transient failure (PostgreSQL or MongoDB unreachable, a
        connection lost while the phase, the chunk table or the sweep is written) starts
        the loop again after a backoff: every step resumes from what is persisted (the
        phase row, the chunk table, the sweep mark)."""
        failures = 0
        while not self.stopping:
            started = time.monotonic()
            try:
                await self._lifecycle_loop()
                return
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                # Consecutive failures only: a loop that ran a while starts over small.
                failures = 1 if time.monotonic() - started > 60 else failures + 1
                log.warning("lifecycle step failed; retrying", extra={"fields": {
                    "phase": self.phases.current.value, "error": type(exc).__name__,
                    "attempt": failures}})
                await anyio.sleep(min(30.0, 0.2 * 2 ** min(failures, 7)))

    async def _lifecycle_loop(self) -> None:
        while not self.stopping:
            phase = self.phases.current
            if phase not in MANAGED:
                log.info("phase is managed by cutover; only the stream runs",
                         extra={"fields": {"phase": phase.value}})
                return
            if phase is Phase.RESYNC_REQUIRED:
                await self._stream_ready.wait()
                self._resync = anyio.Event()
                namespaces = await self._namespaces()
                # Remembered so a restart still sweeps after finishing the re-copy.
                await self.store.set_fact(SWEEP_KEY, self.stream_start.packed)
                await self.store.reset(namespaces)
                await self.phases.move(Phase.BACKFILLING, "re-copy after history loss")
            elif phase is Phase.INIT:
                await self.phases.move(Phase.BACKFILLING, "change stream started")
            if not await self._run_backfill():
                if self.stopping:
                    return
                continue  # resync requested while copying
            await self._sweep_after_resync()
            if self.phases.current is Phase.BACKFILLING:
                await self.phases.move(Phase.CATCHING_UP, "backfill done")
            await self._watch_lag()

    async def _sweep_after_resync(self) -> None:
        """Remove rows of documents deleted while the stream had lost its history."""
        before = await self.store.get_fact(SWEEP_KEY)
        if before is None:
            return
        bf = Backfill(client=self.client, sink=self.sink, store=self.store,
                      config=self.config.backfill, stream_start=self.stream_start,
                      locate=self.stream_state.locator(MAIN_STREAM))
        swept = 0
        for ns in await self._namespaces():
            root = self.mapper_for(ns).tables()[0]
            swept += await bf.sweep_stale(ns, root.schema, root.name,
                                          ClusterTime.from_packed(int(before)))
        await self.store.delete_fact(SWEEP_KEY)
        log.info("rows older than the re-copy checked again", extra={"fields": {
            "rows": swept}})

    async def _run_backfill(self) -> bool:
        namespaces = await self._namespaces()
        planned = [await self.store.is_planned(ns) for ns in namespaces]
        pending = not all(planned) or await self.store.remaining(namespaces) > 0
        if not pending:
            return True
        if self.phases.current in (Phase.CATCHING_UP, Phase.IN_SYNC):
            await self.phases.move(Phase.BACKFILLING, "collections left to copy")
        self.backfill = Backfill(client=self.client, sink=self.sink, store=self.store,
                                 config=self.config.backfill,
                                 stream_start=self.stream_start,
                                 locate=self.stream_state.locator(MAIN_STREAM))
        self._backfill_idle = anyio.Event()
        started = time.monotonic()
        try:
            if self.stopping or self._resync.is_set():
                return False
            done = await self.backfill.run(namespaces, self._progress)
        finally:
            self._backfill_idle.set()
            if self._tty:
                sys.stderr.write("\n")
        if done:
            log.info("backfill done", extra={"fields": {
                "documents": self.backfill.copied_documents,
                "seconds": round(time.monotonic() - started, 1)}})
        return done and not self._resync.is_set()

    def _progress(self, line: str) -> None:
        if self._tty:
            sys.stderr.write("\r" + line + "   ")
            sys.stderr.flush()
        elif time.monotonic() - self._last_log >= 10:
            self._last_log = time.monotonic()
            log.info(line)

    async def _watch_lag(self) -> None:
        cfg = self.config.phases
        while not self._resync.is_set() and not self.stopping:
            phase = self.phases.current
            if phase not in (Phase.CATCHING_UP, Phase.IN_SYNC):
                return  # resync (or cutover) took over: the lifecycle loop decides
            lag: float | None = None
            if self.tailer is not None:
                try:
                    lag = await self.tailer.lag_seconds()
                except Exception as exc:  # unreachable source: no decision this round
                    log.warning("lag unknown: %s", type(exc).__name__)
            target = next_phase(phase, stream_started=True, backfill_done=True,
                                lag_seconds=lag, threshold=cfg.in_sync_lag_seconds,
                                history_lost=False)
            reason = f"lag {lag:.1f}s" if lag is not None else None
            if target is not phase and await self.phases.move(target, reason, expect=phase):
                log.info("phase", extra={"fields": {"phase": target.value}})
            with anyio.move_on_after(cfg.check_interval_seconds):
                await self._resync.wait()
