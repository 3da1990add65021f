"""The change-stream tailer: read, batch, apply with the checkpoint, resume, repeat.

:class:`Tailer` keeps one change stream open on the source (deployment or database
scope, ``$match`` on the watched namespaces; :mod:`cdc.cursor`) and applies it to
PostgreSQL through the sink, exactly once in effect:

1. **Start.** On the very first start it opens at the server's current operation time
   and records that time in ``stream_state`` (``stream_start``) and as a token-less
   checkpoint *before* reporting started — backfill may read a chunk only after that
   (DESIGN §3.2). Later starts resume after the committed token (``resumeAfter``), or at
   the committed time when no event was seen yet. ``start_fresh`` drops the old position
   and starts at the current time (after a resync).
2. **Batch.** Events go through :class:`~cdc.batcher.Accumulator`: source transactions
   stay whole, batches are cut by size, age, or when the server had nothing more;
   an empty reply still advances the checkpoint to its ``postBatchResumeToken``.
3. **Apply.** :func:`~cdc.batcher.to_changes` coalesces each batch to one change per
   document (versions = the event's packed cluster time; ``updateLookup`` content is
   labelled with its event's time; a ``null`` lookup or missing post-image is re-fetched
   by ``_id`` where the document lives now, following a rename under ``follow``, and
   emits nothing only if the document is gone — :mod:`cdc.refetch`) and the sink commits
   the rows and the checkpoint in one transaction (DESIGN §3.3). While a batch is
   applied, :mod:`cdc.readahead` keeps issuing ``getMore`` and decoding the replies
   (up to one batch's worth queued), so reading and decoding overlap the wait for
   PostgreSQL; replies hold at most ``REPLY_EVENTS`` events and after a full one the
   next ``getMore`` also runs while it is consumed. Queued replies are consumed in
   order before anything is read again; they are only read, never committed, ahead of
   the accumulator, and are dropped with the cursor (a reopen resumes from the
   checkpoint). Only an idle stream waits ``max_await_ms`` in a step: once a batch with
   events is committed, the step returns. Under a backlog (events queued) a flush
   *stages* its batch (:meth:`cdc.sink.Sink.stage`: transaction opened, upserts COPYed
   into staging, no lock taken) while the batch staged before it commits on another
   connection, and leaves it staged for the next flush; so PostgreSQL merges one batch
   while the next is prepared and COPYed. Batches still commit one at a time in stream
   order: a batch is committed only after the one before it, a failure of either rolls
   the other back, and the sink's fence refuses a batch whose predecessor is not
   committed. A step that ends with no event queued commits what is staged, so an
   idle or lightly loaded stream's latency does not change.
4. **Faults.** One read+apply step is the unit of retry (:mod:`cdc.retry`): on a
   transient error the cursor is dropped and the next attempt reopens *from the last
   committed checkpoint*, after a jittered backoff; replays are harmless (§3.1).
   Codes 286/280/260 raise :class:`~cdc.errors.HistoryLostError` — never skipped.
   :meth:`Tailer.run` refreshes the lag gauge from the server's operation time in a
   task of its own, so lag keeps growing while steps fail and are retried.

DDL (:class:`StreamConfig.ddl`, per namespace pattern, default ``mark``; no policy ever
deletes target data): ``ignore`` logs it; ``mark`` records it in ``stream_state``
(``ddl:<stream>:<ns>``) and stops applying to that table; ``follow`` makes a rename's
new name feed the old table (the stream is reopened with the new name in its filter).
``invalidate`` (a database-scope stream after ``dropDatabase``) reopens with
``startAfter``, so it never wedges. Events over 16 MiB are read as fragments
(``$changeStreamSplitLargeEvent``). A read that still fails (``BSONObjectTooLarge``, on
``aggregate`` or ``getMore``) switches to one event per reply from the checkpoint; a
failure then pins the culprit down as the very next event, which is read again without
its bodies, re-fetched by ``_id`` (labelled with its event's time) and batched in its
place — with the rest of its source transaction — its ``documentKey`` dead-lettered in
the same transaction as the checkpoint past it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from cdc import metrics
from cdc.batch import Batch, Checkpoint, Letter
from cdc.batcher import Accumulator, Position, to_changes
from cdc.cursor import (
    RAW,
    UNKNOWN_STAGE_CODES,
    ChangeStreamCursor,
    Reply,
    StartAt,
    majority_time,
    operation_time,
)
from cdc.errors import HistoryLostError, SourceUnavailable, StreamFenced, first_failure
from cdc.events import (
    ChangeEvent,
    Delete,
    Drop,
    DropDatabase,
    FragmentAssembler,
    Insert,
    Invalidate,
    Rename,
    Replace,
    Unknown,
    Update,
    decode_event,
    decode_raw,
    id_document,
)
from cdc.readahead import TOO_LARGE_CODES, ReadAhead
from cdc.refetch import current_document, fill_post_images
from cdc.retry import call_with_retry
from cdc.state import DdlDecisions, StreamState, ddl_key
from cdc.stream_config import (
    DEFAULT_CONFIG,
    DdlPolicy,
    SinkPort,
    StagedPort,
    StreamConfig,
    matches,
    validate,
)
from cdc.types import ZERO_TIME, ClusterTime, Namespace

log = logging.getLogger("mongo2pg.stream")

REPLY_EVENTS = 1000
"""At most this many events per reply (batches of more span several replies)."""
YIELD_EVERY = 256
"""Events decoded between yields to the event loop (a read-ahead getMore runs then)."""


class _InFlight(msgspec.Struct):
    """A staged batch and what its commit settles in the tailer."""

    staged: StagedPort
    position: Position
    applied_through: ClusterTime
    lettered: list[bytes]
    counts: Counter[tuple[str, str]]
    events: int
    staging_seconds: float


class Tailer:
    """Tails one change stream into the sink; see the module docstring."""

    def __init__(self, *, client: AsyncMongoClient[Any], sink: SinkPort, include: list[str],
                 config: StreamConfig = DEFAULT_CONFIG, stream_name: str = "main",
                 start_fresh: bool = False, state: StreamState | None = None) -> None:
        validate(include, config)
        self._client = client
        self._sink = sink
        self._include = list(include)
        self._config = config
        self.stream_name = stream_name
        self._start_fresh = start_fresh
        self._state = state if state is not None else _state_of(sink)
        self._acc = Accumulator(max_events=config.batch_max_events,
                                max_wait=config.batch_max_ms / 1000)
        self._assembler = FragmentAssembler()
        self._cursor: ChangeStreamCursor | None = None
        self._split = config.split_large_events
        self._prepared = False
        self._start: ClusterTime = ZERO_TIME
        self._committed: Position | None = None
        self._start_after: bytes | None = None
        self._last_applied: ClusterTime = ZERO_TIME
        self._decisions = DdlDecisions()
        """The DDL decisions taken so far (persisted first, then recorded here)."""
        self._displaced: set[Namespace] = set()
        """Re-created collections already warned about (see :meth:`_resolve`)."""
        self._lag_at = 0.0
        self._ahead = ReadAhead(cap=config.batch_max_events, max_await_ms=config.max_await_ms)
        self._careful = 0
        """Events still to be read one per reply after an event too large to return."""
        self._reopen_at: Position | None = None
        """Where the next open resumes while keeping what is pending (past an event too
        large to return, put in the accumulator in its place by :meth:`_skip`)."""
        self._letters: dict[bytes, Letter] = {}
        """Dead letters of such events (by token), committed with the batch applying them."""
        self._reading_ahead = False
        self._drop_later = False
        self._staged: _InFlight | None = None
        """A batch staged in its open transaction, committed by the next flush (beside
        the next batch's staging) or when the step ends with nothing queued."""

    # ------------------------------------------------------------------ public
    @property
    def last_applied(self) -> ClusterTime:
        """Cluster time up to which every change has been applied and committed."""
        return self._last_applied

    @property
    def read_ahead_events(self) -> int:
        """Events read ahead and queued, not yet consumed (nothing of them is applied)."""
        return self._ahead.events

    @property
    def start_time(self) -> ClusterTime:
        return self._start

    async def lag_seconds(self) -> float:
        """Server's latest operation time minus the last applied cluster time (≥ 0)."""
        now = await self._server_time()
        lag = max(0.0, float(now.t - self._last_applied.t)) if now > self._last_applied else 0.0
        metrics.LAG.labels(self.stream_name).set(lag)
        return lag

    async def run(self, *, task_status: anyio.abc.TaskStatus[ClusterTime]
                  = anyio.TASK_STATUS_IGNORED) -> None:
        """Tail until cancelled; reports the stream's start time once it is recorded."""
        start = await call_with_retry(self._config.retry, self._prepare, self._on_retry)
        task_status.started(start)
        try:
            async with anyio.create_task_group() as tg:
                # Lag comes from the server's clock, not from progress: it keeps being
                # refreshed while steps fail and are retried (DESIGN §3.5).
                tg.start_soon(self._keep_lag_fresh)
                while True:
                    await call_with_retry(self._config.retry, self._step, self._on_retry)
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._abort_staged()
                await self._drop_cursor()

    async def _keep_lag_fresh(self) -> None:
        interval = max(0.001, self._config.lag_interval_ms / 1000)
        while True:
            await anyio.sleep(interval)
            if time.monotonic() - self._lag_at < interval:
                continue  # a step refreshed it just now
            self._lag_at = time.monotonic()
            try:
                with anyio.move_on_after(max(1.0, interval)):
                    await self.lag_seconds()
            except Exception as exc:  # the source may be down: the gauge keeps its value
                log.debug("lag not refreshed", extra={"fields": {
                    "stream": self.stream_name, "error": type(exc).__name__}})

    async def run_once(self) -> int:
        """One read+apply step (the seam tests drive); returns the events read.

        When the step ends in a flush, the next ``getMore`` is issued while the batch is
        applied (kept for the next step), so reading and writing overlap under load.
        A batch refused because another applier of the stream committed past it
        (:class:`~cdc.errors.StreamFenced`) ends the step: the next one resumes from the
        stored checkpoint.
        """
        try:
            count = await self._run_once()
            if self._staged is not None and not self._ahead.events:
                await self._settle()  # no event queued: no next batch to stage beside it
            idle = self._acc.idle_through() if self._staged is None else None
            if idle is not None:
                self._claim(idle)
            return count
        except anyio.get_cancelled_exc_class():
            # Cancelled by the caller, maybe with a getMore abandoned in flight: where the
            # cursor stands is unknown, so the next step reopens from the checkpoint.
            with anyio.CancelScope(shield=True):
                await self._abort_staged()
                await self._drop_cursor()
            raise
        except StreamFenced:
            log.info("another applier moved the stream on; resuming from its checkpoint",
                     extra={"fields": {"stream": self.stream_name}})
            metrics.RETRIES.labels(self.stream_name).inc()
            await self._abort_staged()
            self._prepared = self._start_fresh = False
            self._committed = None
            await self._drop_cursor()
            return 0

    async def _run_once(self) -> int:
        await self._prepare()
        reply: Reply | OperationFailure
        quick = False
        decoded: list[ChangeEvent | None] | None = None
        # Replies read ahead come first, even when the server has closed the cursor
        # since (its last reply): they were read in order from it (a dropped cursor
        # takes its queue with it).
        ahead = self._ahead.pop()
        try:
            if ahead is not None:
                reply, decoded, quick = ahead.reply, ahead.decoded, ahead.quick
            elif self._cursor is None or not self._cursor.alive:
                reply = await self._open()
            else:
                reply = await self._cursor.next_batch(self._await_ms())
        except OperationFailure as exc:
            if (exc.code or 0) not in TOO_LARGE_CODES:
                raise
            reply = exc
        if isinstance(reply, OperationFailure):
            return await self._too_large()
        requested = self._requested()
        if self._careful:
            left = max(0, self._careful - 1) if reply.events else 0
            # Until the batch holding an event read in place (_skip) commits, one event
            # per reply: another one too large to return (say, later in its transaction)
            # must be pinned down too, not make the stream reread it from the checkpoint.
            self._careful = max(left, 1 if self._letters and reply.events else 0)
            if not self._careful and self._cursor is not None:
                self._cursor.batch_size = self._requested()
        cursor = self._cursor
        if (not self._careful and cursor is not None and cursor.alive
                and len(reply.events) >= requested):
            # A full reply: more is queued. The next getMores run on the server while
            # this reply is consumed (and applied, when the batch is due).
            return await self._consume_ahead(reply, decoded, requested, cursor)
        count = await self._consume(reply, requested, decoded)
        if quick and not count and not self._acc.settled and not self._acc.held:
            # A quick read-ahead came back empty: the next step waits for events
            # (max_await_ms) and commits the moved position with them or after it.
            return 0
        if self._acc.due(time.monotonic()):
            if self._cursor is not None and self._cursor.alive:
                # A batch with events: the prefetch only picks up what is queued or
                # arrives during the apply, and does not hold the step open for
                # ``max_await_ms`` once the batch is committed. A bare position advance
                # (an idle stream): the next step may as well wait there.
                carries = self._acc.settled > 0
                await self._flush_and_prefetch(
                    self._cursor, 1 if carries else self._config.max_await_ms)
            else:
                await self._flush(keep=True)
        if time.monotonic() - self._lag_at >= self._config.lag_interval_ms / 1000:
            self._lag_at = time.monotonic()
            await self.lag_seconds()
        return count

    async def _consume_ahead(self, reply: Reply, decoded: list[ChangeEvent | None] | None,
                             requested: int, cursor: ChangeStreamCursor) -> int:
        """Consume ``reply`` (and flush when due) while the next replies are read ahead.

        A DDL event that needs the stream reopened only asks for it here; the cursor is
        dropped once the in-flight ``getMore`` is back (the read-ahead is then discarded).
        Replies already queued are consumed first; more are read only while the last one
        read was full and the queue has room.

        Beside the cuts of the accumulator, a batch is also cut when everything read so
        far is consumed (no reply queued): applying it now overlaps the apply with the
        reads still to come, instead of reading a whole batch first. Under a backlog the
        batches grow by themselves to ``batch_max_events`` while applying is slower than
        reading (more is read during each apply)."""

        async def work() -> int:
            count = await self._consume(reply, requested, decoded)
            if self._acc.due(time.monotonic()) or (self._acc.settled and not self._ahead):
                await self._flush(keep=True)
            return count

        self._drop_later = False
        if self._ahead:
            # Replies are queued (decoded already): consuming this one is quick, so a
            # getMore beside it would only make the step wait for the server. Reading
            # ahead resumes beside the flush, where it overlaps the wait for PostgreSQL.
            count = await self._consume(reply, requested, decoded)
            if self._acc.due(time.monotonic()):
                if self._cursor is cursor and cursor.alive and self._ahead_open():
                    await self._flush_and_prefetch(cursor, 1)
                else:
                    await self._flush(keep=True)
        else:
            self._reading_ahead = True
            try:
                count = await self._ahead.beside(
                    cursor, work, first_wait_ms=1, requested=requested,
                    keep_going=not self._careful, stop=lambda: self._drop_later)
            finally:
                self._reading_ahead = False
        if self._drop_later:
            await self._drop_cursor()
        if time.monotonic() - self._lag_at >= self._config.lag_interval_ms / 1000:
            self._lag_at = time.monotonic()
            await self.lag_seconds()
        return count

    def _ahead_open(self) -> bool:
        """Whether reading ahead may go on: the last reply queued was full (the server
        has more) and the queue has room."""
        last = self._ahead.last
        return (last is not None and isinstance(last.reply, Reply)
                and len(last.reply.events) >= self._requested()
                and self._ahead.events < self._ahead.cap)

    async def _end_cursor(self) -> None:
        """Drop the cursor now, or after the in-flight read-ahead ``getMore``."""
        if self._reading_ahead:
            self._drop_later = True
        else:
            await self._drop_cursor()

    async def _flush_and_prefetch(self, cursor: ChangeStreamCursor, wait_ms: int) -> None:
        """Flush while the next replies are read (the first waiting ``wait_ms``)."""

        async def work() -> None:
            await self._flush(keep=True)

        self._drop_later = False
        self._reading_ahead = True
        try:
            await self._ahead.beside(cursor, work, first_wait_ms=wait_ms,
                                     requested=self._requested(),
                                     keep_going=not self._careful,
                                     stop=lambda: self._drop_later)
        finally:
            self._reading_ahead = False
        if self._drop_later:
            await self._drop_cursor()

    async def close(self) -> None:
        """Commit the batch still staged, close the server cursor (the tailer may be run
        again afterwards)."""
        try:
            await self._settle()
        finally:
            await self._drop_cursor()

    # ------------------------------------------------------------------ start
    async def _prepare(self) -> ClusterTime:
        if self._prepared:
            return self._start
        checkpoint = None if self._start_fresh else await self._sink.load_checkpoint(
            self.stream_name)
        stored_start = await self._state.stream_start(self.stream_name)
        if checkpoint is not None:
            at = ClusterTime.from_packed(checkpoint.cluster_time)
            self._start = stored_start or at
            self._last_applied = at
            if checkpoint.resume_token is not None:
                self._committed = Position(checkpoint.resume_token, at)
            else:
                self._start = at  # opened before, no event seen yet: start there again
        elif stored_start is not None and not self._start_fresh:
            self._start = self._last_applied = stored_start
        else:
            self._start = self._last_applied = await self._majority_time()
            await self._state.set_stream_start(self.stream_name, self._start)
            # A token-less checkpoint makes the start durable before anything is read.
            await self._sink.apply(Batch([], Checkpoint(self.stream_name, None,
                                                        self._start.packed)))
            log.info("change stream starts", extra={"fields": {
                "stream": self.stream_name, "at": f"{self._start.t}.{self._start.i}"}})
        # Events at the start point itself may still come (a stream opened at a time
        # includes it; a checkpoint may fall among events sharing its time).
        self._last_applied = self._last_applied.before()
        await self._load_ddl()
        metrics.LAST_APPLIED.labels(self.stream_name).set(self._last_applied.t)
        self._prepared = True
        return self._start

    async def _majority_time(self) -> ClusterTime:
        """Where a new stream starts: the majority-committed point, not the last applied
        write (``ping``), which an election may roll back. A new primary may then write
        at times before that write's, and a stream started after it would skip those."""
        db, _, coll = self._include[0].partition(".") if self._include else ("admin", "", "")
        probe = Namespace(db, coll if coll and coll != "*" else "mongo2pg_probe")
        when = await majority_time(self._client, probe)
        if when is None:
            raise SourceUnavailable("majority read reply carries no operationTime")
        return when

    async def _server_time(self) -> ClusterTime:
        reply = await self._client.admin.command("ping")
        when = operation_time(reply)
        if when is None:
            raise SourceUnavailable("server reply carries no operationTime/$clusterTime")
        return when

    async def _open(self) -> Reply:
        await self._settle()  # a reopen reads on from what is committed
        resume, self._reopen_at = self._reopen_at, None
        await self._drop_cursor()
        self._assembler.reset()
        if resume is not None:
            # Right after an event read in place by _skip: what is pending stays (it is
            # the stream from the checkpoint up to that event, a transaction maybe open).
            start = StartAt(resume_after=resume.token)
        else:
            start = self._start_at()
            self._acc.start_at(self._committed)
            self._letters.clear()
        while True:
            cursor = self._new_cursor(split_large_events=self._split,
                                      batch_size=self._requested())
            try:
                reply = await cursor.open(start)
            except OperationFailure as exc:
                if self._split and _unknown_stage(exc):
                    log.warning("server lacks $changeStreamSplitLargeEvent; reading without")
                    self._split = False
                    continue
                raise
            self._cursor = cursor
            self._start_after = None
            return reply

    def _new_cursor(self, *, split_large_events: bool, batch_size: int,
                    strip_bodies: bool = False) -> ChangeStreamCursor:
        """A cursor on the watched namespaces (and the new names of followed renames)."""
        return ChangeStreamCursor(
            self._client, patterns=self._include,
            extra_namespaces=list(self._decisions.aliases),
            full_document=self._config.full_document,
            split_large_events=split_large_events, batch_size=batch_size,
            strip_bodies=strip_bodies)

    def _requested(self) -> int:
        """Events asked for per reply: a batch may span several replies, so that the
        server produces the next reply while this one is decoded."""
        return 1 if self._careful else min(self._config.batch_max_events, REPLY_EVENTS)

    def _start_at(self) -> StartAt:
        """Where a (re)opened stream starts: the last committed position."""
        if self._start_after is not None:
            return StartAt(start_after=self._start_after)
        if self._committed is not None:
            return StartAt(resume_after=self._committed.token)
        return StartAt(at_time=self._start)

    async def _drop_cursor(self) -> None:
        self._ahead.clear()
        self._reopen_at = None  # a reopen after a failure starts from the checkpoint
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with anyio.move_on_after(2):
                await cursor.close()

    def _after(self) -> int:
        """Where the next batch's events start: the position of the batch staged before
        it (committed first), else the last committed position."""
        if self._staged is not None:
            return self._staged.position.cluster_time.packed
        return (self._committed.cluster_time if self._committed is not None
                else self._start).packed

    async def _step(self) -> None:
        try:
            await self.run_once()
        except HistoryLostError:
            metrics.HISTORY_LOST.labels(self.stream_name).inc()
            log.error("change stream history lost: resync required",
                      extra={"fields": {"stream": self.stream_name}})
            await self._abort_staged()
            await self._drop_cursor()
            raise
        except Exception:
            await self._abort_staged()
            await self._drop_cursor()  # the next attempt resumes from the checkpoint
            raise

    def _on_retry(self, exc: BaseException, attempt: int) -> None:
        metrics.RETRIES.labels(self.stream_name).inc()
        log.warning("transient failure, resuming from the last checkpoint",
                    extra={"fields": {"stream": self.stream_name, "attempt": attempt,
                                      "error": type(exc).__name__}})

    def _await_ms(self) -> int:
        if self._acc.settled or self._acc.held:
            return max(1, self._config.batch_max_ms // 2)
        return self._config.max_await_ms

    # ------------------------------------------------------------------ batches
    async def _consume(self, reply: Reply, requested: int,
                       decoded: list[ChangeEvent | None] | None = None) -> int:
        now = time.monotonic()
        for n, raw in enumerate(reply.events):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await anyio.lowlevel.checkpoint()  # a read-ahead getMore goes out/comes back
            # Decoded while read ahead, else now: data events' envelopes from the bytes.
            fast = decoded[n] if decoded is not None else decode_raw(raw)
            if fast is not None:
                self._assembler.reset()  # as feed() does for a whole event
                self._acc.add(fast, now)
                continue
            whole = self._assembler.feed(RawBSONDocument(raw, RAW))
            if whole is None:
                continue
            event = decode_event(whole)
            if isinstance(event, Insert | Update | Replace | Delete):
                self._acc.add(event, now)
            elif isinstance(event, Unknown):
                metrics.UNKNOWN_EVENTS.labels(event.operation_type).inc()
                log.info("skipping change event of unhandled type",
                         extra={"fields": {"operation": event.operation_type}})
                self._acc.add(event, now)
            elif isinstance(event, Invalidate):
                metrics.DDL_EVENTS.labels("", "invalidate").inc()
                self._acc.close_group()
                await self._flush()
                self._start_after = event.token
                await self._end_cursor()
                return len(reply.events)
            else:
                if await self._ddl(event, now):
                    await self._end_cursor()  # reopen with the new name in the filter
                    return len(reply.events)
        self._acc.end_of_reply(
            count=len(reply.events), requested=requested,
            # A token past a partly read split event would skip its other fragments.
            post_batch_token=None if self._assembler.pending else reply.post_batch_token,
            reply_time=reply.time)
        return len(reply.events)

    def _resolve(self, ns: Namespace) -> Namespace | None:
        """The namespace whose table receives the events of ``ns`` (``None``: none)."""
        if ns not in self._decisions.aliases and not matches(self._include, ns):
            return None
        target = self._decisions.target(ns)
        if target is None and self._decisions.displaced(ns) and ns not in self._displaced:
            self._displaced.add(ns)
            log.warning("collection re-created under a name whose table a renamed"
                        " collection feeds (follow): not applied", extra={"fields": {
                            "namespace": str(ns)}})
        return target

    async def _flush(self, *, keep: bool = False) -> None:
        """Stage the settled events as a batch while the batch staged before commits
        (its merge overlaps this one's preparation and COPY, on another connection);
        with ``keep`` this batch stays staged for the next flush, else it commits now."""
        pending = self._acc.take()
        if pending is None:
            await self._settle()
            return
        after = self._after()
        previous, self._staged = self._staged, None

        async def stage() -> None:
            changes, counts = to_changes(await fill_post_images(
                self._client, pending.events, self._config.full_document, self._follows),
                                         self._resolve)
            position = pending.position
            batch = Batch(changes, Checkpoint(self.stream_name, position.token,
                                              position.cluster_time.packed),
                          after=after, coalesced=True)
            lettered = [e.token for e in pending.events if e.token in self._letters
                        ] if self._letters else []
            batch.letters.extend(self._letters[token] for token in lettered)
            began = time.perf_counter()
            staged = await self._sink.stage(batch)
            self._staged = _InFlight(staged, position, pending.applied_through, lettered,
                                     counts, len(pending.events),
                                     time.perf_counter() - began)

        if previous is None:
            await stage()
        else:
            # The batch staged before commits first: this one never commits before it,
            # and a failure of either rolls the other back.
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._commit, previous)
                    await stage()
            except BaseExceptionGroup as group:
                await self._abort_staged()
                raise first_failure(group) from None
        self._acc.committed(pending.position)  # handed to the sink: no empty batch repeats it
        if not keep:
            await self._settle()

    async def _settle(self) -> None:
        """Commit the staged batch, if any."""
        inflight, self._staged = self._staged, None
        if inflight is not None:
            await self._commit(inflight)

    async def _abort_staged(self) -> None:
        """Roll the staged batch back (a failed step resumes from the checkpoint)."""
        inflight, self._staged = self._staged, None
        if inflight is not None:
            await inflight.staged.abort()

    async def _commit(self, inflight: _InFlight) -> None:
        began = time.perf_counter()
        result = await inflight.staged.commit()
        _count_dead_letters(result)
        for token in inflight.lettered:
            letter = self._letters.pop(token)
            metrics.DEAD_LETTERS.labels(letter.namespace).inc()
            log.warning("change event too large: dead-lettered, re-fetched by _id",
                        extra={"fields": {"namespace": letter.namespace}})
        # Staging plus committing; not the time the batch waited staged in between.
        metrics.APPLY_DURATION.labels(self.stream_name).observe(
            inflight.staging_seconds + time.perf_counter() - began)
        metrics.BATCH_SIZE.labels(self.stream_name).observe(inflight.events)
        for (namespace, op), n in inflight.counts.items():
            metrics.EVENTS_APPLIED.labels(namespace, op).inc(n)
        self._committed = inflight.position
        self._claim(inflight.applied_through)

    def _claim(self, through: ClusterTime) -> None:
        """Every change up to ``through`` is applied (``last_applied`` never goes back)."""
        if through > self._last_applied:
            self._last_applied = through
            metrics.LAST_APPLIED.labels(self.stream_name).set(through.t)

    # ------------------------------------------------------------------ DDL
    def _policy(self, ns: Namespace) -> DdlPolicy:
        for pattern in (str(ns), f"{ns.db}.*"):
            if pattern in self._config.ddl:
                return self._config.ddl[pattern]
        return self._config.ddl_default

    def _follows(self, ns: Namespace) -> bool:
        """Whether a rename of ``ns`` is followed (its documents keep feeding its table)."""
        target = self._resolve(ns)
        return target is not None and self._policy(target) == "follow"

    def _ddl_key(self, what: str) -> str:
        return ddl_key(self.stream_name, what)

    async def _load_ddl(self) -> None:
        self._decisions.merge(await self._state.ddl_decisions(self.stream_name))

    async def _ddl(self, event: Drop | Rename | DropDatabase, now: float) -> bool:
        """Apply a DDL event under its policy; True when the stream must be reopened."""
        self._acc.close_group()
        await self._flush()  # everything before the DDL lands first
        reopen = False
        when = event.cluster_time.packed
        if isinstance(event, DropDatabase):
            policy = self._policy(Namespace(event.db, "*"))
            metrics.DDL_EVENTS.labels(f"{event.db}.*", "dropDatabase").inc()
            if policy == "mark":
                # Persisted before it takes effect in memory: if the put fails, the step is
                # retried from the checkpoint (still before this event) and puts again.
                await self._state.put(self._ddl_key(f"{event.db}.*"), {
                    "op": "dropDatabase", "marked_db": event.db, "cluster_time": when})
                self._decisions.marked_dbs.add(event.db)
            what = event.db
        else:
            target = self._resolve(event.ns)
            what = str(event.ns)
            policy = self._policy(target or event.ns)
            metrics.DDL_EVENTS.labels(str(target or event.ns), type(event).__name__.lower()).inc()
            # Each decision is persisted first and takes effect in memory only then, so
            # a failed put (retried from the checkpoint before this event) is redone.
            if target is not None and policy == "mark":
                await self._state.put(self._ddl_key(str(target)), {
                    "op": type(event).__name__.lower(), "marked": str(target),
                    "cluster_time": when})
                self._decisions.marked.add(target)
            elif target is not None and policy == "follow" and isinstance(event, Rename):
                await self._state.put(self._ddl_key(str(event.to)), {
                    "op": "rename", "alias_from": str(event.to), "alias_to": str(target),
                    "cluster_time": when})
                self._decisions.aliases[event.to] = target
                self._decisions.renamed_at[event.to] = when
                reopen = True
        log.warning("DDL on a watched namespace", extra={"fields": {
            "namespace": what, "operation": type(event).__name__, "policy": policy}})
        self._acc.add(event, now)
        await self._flush()  # checkpoint past the DDL event
        return reopen

    # ------------------------------------------------------------------ large events
    async def _too_large(self) -> int:
        """Handle a read that failed because an event is too large to return.

        The failed reply's events are unknown, so the first failure only switches to
        reading one event per reply from the last committed position (``_careful``).
        A failure then means the event right after the last one read is the culprit:
        what was read is committed — except an open source transaction, which the culprit
        may belong to — and that exact event is read in its place (:meth:`_skip`)."""
        if not self._careful:
            self._careful = self._acc.settled + self._acc.held + self._config.batch_max_events
            await self._drop_cursor()  # reopens from the checkpoint, one event per reply
            return 0
        await self._flush()  # an open transaction group stays pending, kept whole
        after = self._acc.held_until
        await self._drop_cursor()
        if await self._skip(after):
            # The next event is read alone too: if it is too large as well, what is
            # pending (the culprit included) is there to commit before it is skipped.
            self._careful = 1
        return 1

    async def _skip(self, after: Position | None) -> bool:
        """Read the next event after ``after`` (else after the checkpoint) without its
        bodies and add it to the accumulator in its place, its document re-fetched by
        ``_id``; its dead letter commits with the batch that applies it, with the
        checkpoint past it. The stream then reopens right after it, keeping what is
        pending: a source transaction around it stays one batch, and nothing after it
        counts as applied before the rest of that transaction is. False when no event
        could be read yet (the next step tries again)."""
        side = self._new_cursor(split_large_events=False, batch_size=1, strip_bodies=True)
        try:
            reply = await side.open(StartAt(resume_after=after.token) if after is not None
                                    else self._start_at())
            if not reply.events:
                reply = await side.next_batch(self._config.max_await_ms)
        finally:
            await side.close()
        if not reply.events:
            return False
        raw = reply.events[0]
        event = decode_event(RawBSONDocument(raw, RAW))
        target = self._resolve(event.ns) if isinstance(event, Insert | Update | Replace | Delete
                                                       ) else None
        if isinstance(event, Insert | Update | Replace | Delete) and target is not None:
            id_bson = id_document(event.document_key)
            found = True
            if not isinstance(event, Delete):
                # Like updateLookup: the current document, labelled with the event's time;
                # gone means a later delete event (or its collection's drop) settles it.
                doc = await current_document(self._client, event.ns, event.token, id_bson,
                                             self._follows)
                found = doc is not None
                event = msgspec.structs.replace(event, full_document=doc)
            self._letters[event.token] = Letter(
                namespace=str(target), id_bson=id_bson, version=event.cluster_time.packed,
                raw=raw, reason="change event exceeds 16 MiB", resolved=found)
        self._acc.add(event, time.monotonic())
        self._reopen_at = Position(event.token, event.cluster_time)
        return True


__all__ = ["DdlPolicy", "SinkPort", "StreamConfig", "Tailer", "matches", "validate"]


def _count_dead_letters(result: Any) -> None:
    """Count the documents the sink dead-lettered (mapping failures) per namespace."""
    for namespace, per_op in (getattr(result, "counts", None) or {}).items():
        lettered = sum(getattr(c, "dead_lettered", 0) for c in per_op.values())
        if lettered:
            metrics.DEAD_LETTERS.labels(str(namespace)).inc(lettered)


def _unknown_stage(exc: OperationFailure) -> bool:
    return (exc.code or 0) in UNKNOWN_STAGE_CODES or "SplitLargeEvent" in str(exc)


def _state_of(sink: Any) -> StreamState:
    """The control-schema store sharing the sink's pool and control schema."""
    pool = getattr(sink, "pool", None) or getattr(sink, "_pool", None)
    schema = getattr(sink, "control_schema", None) or getattr(sink, "_schema", None)
    if pool is None or not isinstance(schema, str):
        raise TypeError("pass state= or a sink exposing its pool and control schema")
    return StreamState(pool, schema)
