"""The backfill: plan every collection, then copy chunks with parallel workers.

Mechanism: :meth:`Backfill.run` plans each namespace once (shared control schema, see
:mod:`backfill.chunks`), then runs ``workers`` tasks in one anyio task group; each holds
a slot of a :class:`anyio.CapacityLimiter` (adjustable at run time) while it copies a
chunk. Copying a chunk: claim it, open a read lease on its namespace (deletes leave
tombstones while it is live, see :mod:`cdc.sink.readers`; every batch names it and is
refused once it has expired), fix the read label (:func:`backfill.reader.read_label`,
never below the stream's start time), read its range in raw batches and hand them to
the sink as :class:`cdc.batch.Change` upserts of origin ``BACKFILL`` carrying the label
as version. A reader task fetches the next ``getMore`` batches (a bounded memory object
stream, ``READ_AHEAD`` batches) while the writer groups read batches into sink batches
of about ``batch_size`` documents; a group is written once the next read batch arrived
(or the read ended), so the last group is known and carries ``chunk_id``: the sink marks
the chunk done in the transaction that writes its last rows, and a failed read is raised
before that write. A crash at any point leaves the chunk either done with all its rows,
or claimable again; the read lease is closed once the chunk ends either way. A read
lease that expired (a pause longer than ``lease_seconds``) hands the chunk back like a
lost chunk lease. The chunk lease is renewed (with progress) at most every
``min(lease_seconds / 4, progress_interval_seconds)``, and always before a write that
follows a longer pause.

A graceful stop (:meth:`Backfill.request_stop`) lets each worker finish the batch it is
writing, then hands its chunk back; nothing is cancelled mid-transaction. A batch still
waiting for the throttle (or a worker's backoff) is not waited for. Run returns
when no chunk of its namespaces is pending or running in any process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import bson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession

from backfill.chunks import ChunkRecord, ChunkStore
from backfill.config import BackfillConfig
from backfill.planner import plan_collection
from backfill.progress import BYTES, DOCUMENTS, ProgressTracker, export, render_line
from backfill.reader import Span, chunk_filter, read_batches, read_label
from backfill.throttle import Throttle
from cdc.batch import Batch, Change, Op, Origin
from cdc.errors import (
    InvariantError,
    ReadLeaseLost,
    first_failure,
    is_retriable,
    read_interrupted,
)
from cdc.mapping.keys import id_bson_from_raw
from cdc.types import ClusterTime, Namespace

log = logging.getLogger("mongo2pg.backfill")
MAX_WORKERS = 16
READ_AHEAD = 2
"""Read batches a worker's reader may hold ready while its writer writes."""


class SinkLike(Protocol):
    """What the backfill needs of the sink: read leases, and apply one batch atomically."""

    async def apply(self, batch: Batch) -> Any: ...

    async def open_reader(self, namespace: Namespace, holder: str, lease_seconds: float
                          ) -> int: ...

    async def renew_reader(self, reader: int) -> bool: ...

    async def applied_time(self, namespace: Namespace) -> int | None: ...

    async def close_reader(self, reader: int) -> None: ...


class _Stopped(Exception):
    """A graceful stop ended a chunk batch's wait for the throttle (nothing written)."""


def default_owner() -> str:
    """Lease owner name: host, pid and a random suffix (unique per process start)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def expand_namespaces(client: AsyncMongoClient[Any], include: Sequence[str]
                            ) -> list[Namespace]:
    """``db.coll`` and ``db.*`` patterns to the collections that exist now."""
    found: list[Namespace] = []
    for pattern in include:
        ns = Namespace.parse(pattern)
        if ns.coll == "*":
            names = await client[ns.db].list_collection_names(
                filter={"type": "collection"})
            found.extend(Namespace(ns.db, n) for n in sorted(names)
                         if not n.startswith("system."))
        else:
            found.append(ns)
    return sorted(set(found))


Locate = Callable[[Namespace], Awaitable[Namespace]]
"""Where the documents of a namespace's table are read now (see :class:`Backfill`)."""


async def _in_place(ns: Namespace) -> Namespace:
    return ns


class Backfill:
    """Copies the collections of the namespaces it is given into their tables.

    ``locate`` says where each namespace's documents are read *now*: after a rename the
    change stream follows (DDL policy ``follow``), the table of ``db.a`` is fed from the
    collection's new name, and so is the rest of its backfill — asked again before each
    chunk, since a rename during a read ends that read (the chunk is then retried)."""

    def __init__(self, *, client: AsyncMongoClient[Any], sink: SinkLike, store: ChunkStore,
                 config: BackfillConfig, stream_start: ClusterTime,
                 throttle: Throttle | None = None, locate: Locate = _in_place):
        self.client = client
        self.locate = locate
        self.sink = sink
        self.store = store
        self.config = config
        self.stream_start = stream_start
        self.throttle = throttle or Throttle(config.throttle_docs_per_second)
        self.limiter = anyio.CapacityLimiter(max(1, config.workers))
        self.tracker = ProgressTracker()
        self.copied_documents = 0
        self.copied_chunks = 0
        self._failures = 0
        """Consecutive failed steps of this process's workers (see ``_back_off``)."""
        self._stop = anyio.Event()
        self._throttle_waits: set[anyio.CancelScope] = set()
        """Chunk batches waiting for the throttle: a stop ends their wait, which at a low
        rate may last longer than a SIGTERM drain (batch size / rate)."""
        self._changed = anyio.Event()
        """Set (and replaced) when a worker of this process ends a chunk, or on a stop:
        wakes the workers waiting for chunks leased by others."""
        # Brackets of the smallest and largest _id per namespace, read once per run
        # (always after the change stream opened; see reader.chunk_filter).
        self._spans: dict[Namespace, Span] = {}

    # -- control ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the batches being written, hand unfinished chunks back, return."""
        self._stop.set()
        self._changed.set()
        for wait in self._throttle_waits:
            wait.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def set_workers(self, n: int) -> None:
        """Change how many chunks this process copies at once (takes effect per chunk;
        up to ``MAX_WORKERS`` or the configured count, whichever is larger)."""
        self.limiter.total_tokens = max(1, n)

    # -- planning --------------------------------------------------------------------
    async def plan(self, namespaces: Sequence[Namespace]) -> None:
        for ns in namespaces:
            async def planner(ns: Namespace = ns) -> Any:
                return await plan_collection(self.client, ns, self.config,
                                             source=await self.locate(ns))

            if await self.store.plan_once(ns, planner):
                log.info("planned backfill", extra={"fields": {"namespace": str(ns)}})

    async def rebackfill(self, namespaces: Sequence[Namespace]) -> None:
        """Copy ``namespaces`` again from scratch (their chunks are re-planned)."""
        await self.store.reset(namespaces)
        self._spans.clear()  # keyed by where they were read: read again
        await self.plan(namespaces)

    # -- running ---------------------------------------------------------------------
    async def run(self, namespaces: Sequence[Namespace],
                  progress_line: Callable[[str], None] | None = None) -> bool:
        """Plan, copy until every chunk is done (True) or a stop was requested (False)."""
        self._spans.clear()
        await self.plan(namespaces)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report_loop, progress_line)
            async with anyio.create_task_group() as workers:
                # Spare tasks wait on the limiter, so set_workers can also raise the count.
                for _ in range(max(MAX_WORKERS, self.config.workers)):
                    workers.start_soon(self._worker, list(namespaces))
            tg.cancel_scope.cancel()
        await self._report(progress_line)
        return not self.stopping

    async def _worker(self, namespaces: list[Namespace]) -> None:
        while not self.stopping:
            chunk: ChunkRecord | None = None
            changed = self._changed  # before the claim: no chunk end goes unnoticed
            async with self.limiter:
                try:
                    chunk = await self.store.claim(namespaces)
                    if chunk is not None:
                        try:
                            await self.copy_chunk(chunk)
                        finally:
                            self._changed.set()
                            self._changed = anyio.Event()
                        self._failures = 0
                        continue
                    remaining = await self.store.remaining(namespaces)
                except Exception as exc:
                    if not (is_retriable(exc) or read_interrupted(exc)):
                        raise
                    await self._back_off(exc, chunk)
                    continue
            if remaining == 0:
                return
            # Chunks are leased by other workers (maybe a dead process): wait until one
            # of ours ends a chunk, or a while for other processes' leases, then retry.
            if not self.stopping:
                with anyio.move_on_after(min(1.0, self.config.lease_seconds / 4)):
                    await changed.wait()

    async def _back_off(self, exc: Exception, chunk: ChunkRecord | None) -> None:
        """After a failed step: hand the chunk back, then wait, holding the worker's slot
        (a spare task would take it and try again at once). The count of consecutive
        failures is shared by the worker tasks, so waits grow whoever tries next."""
        self._failures += 1
        log.warning("backfill step failed; retrying", extra={"fields": {
            "chunk": chunk.id if chunk else None, "error": type(exc).__name__,
            "attempt": self._failures}})
        if chunk is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.store.release(chunk.id)
                except Exception:  # the lease expires on its own
                    pass
        # A stop ends the wait: the chunk is handed back already, and a backoff after a
        # long outage (up to 30 s) would outlast a SIGTERM drain.
        with anyio.move_on_after(min(30.0, 0.2 * 2 ** min(self._failures, 7))):
            await self._stop.wait()

    async def copy_chunk(self, chunk: ChunkRecord) -> bool:
        """Copy one claimed chunk; True when it was completed (marked done)."""
        ns = chunk.namespace
        source = await self.locate(ns)
        filter_ = await chunk_filter(self.client, source, chunk.lower, chunk.upper,
                                     self._spans)
        async with self._read_lease(ns) as reader, \
                self.client.start_session(causal_consistency=False) as session:
            label = await read_label(self.client, source, session, self.stream_start,
                                     await self._applied(ns))
            await self.store.renew(chunk.id, docs=0, nbytes=0, read_started=label.packed)
            try:
                if filter_ is None:
                    return await self._finish(chunk, [], label, 0, 0, reader)
                send, receive = anyio.create_memory_object_stream[list[bytes]](READ_AHEAD)
                failed: list[Exception] = []
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._read_chunk, source, filter_, session, label,
                                      send, failed)
                        with receive:
                            done = await self._write_chunk(chunk, label, reader, receive,
                                                           failed)
                        tg.cancel_scope.cancel()  # stopped early: the reader is not needed
                except BaseExceptionGroup as group:
                    raise first_failure(group) from None
            except ReadLeaseLost:
                log.warning("the read lease of a chunk expired; handing the chunk back",
                            extra={"fields": {"chunk": chunk.id}})
                await self.store.release(chunk.id)
                return False
            except _Stopped:
                await self.store.release(chunk.id)
                return False
        return done

    @contextlib.asynccontextmanager
    async def _read_lease(self, ns: Namespace) -> AsyncIterator[int]:
        """A read lease on ``ns`` for what is read inside (see :mod:`cdc.sink.readers`),
        renewed every quarter of its length meanwhile (a throttled read may pause longer
        than a lease between two writes); closed on the way out, whatever happened (an
        unclosed one only expires)."""
        reader = await self.sink.open_reader(ns, self.store.owner, self.config.lease_seconds)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_lease, reader)
                yield reader
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # What failed inside, as itself: the worker's retry decision reads its type.
            raise first_failure(group) from None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.sink.close_reader(reader)
                except Exception as exc:  # it expires on its own
                    log.warning("could not close a read lease", extra={"fields": {
                        "error": type(exc).__name__}})

    async def _applied(self, ns: Namespace) -> ClusterTime | None:
        """What the sink had applied once the lease was open: the label's lower bound."""
        applied = await self.sink.applied_time(ns)
        return None if applied is None else ClusterTime.from_packed(applied)

    async def _keep_lease(self, reader: int) -> None:
        """Renew ``reader`` until cancelled; stop once it has expired (the next write
        under it is refused, and the chunk is copied again)."""
        while True:
            await anyio.sleep(self.config.lease_seconds / 4)
            try:
                if not await self.sink.renew_reader(reader):
                    return
            except Exception as exc:  # the writes renew it too, or are refused
                log.warning("could not renew a read lease", extra={"fields": {
                    "error": type(exc).__name__}})

    async def _read_chunk(self, ns: Namespace, filter_: dict[str, Any],
                          session: AsyncClientSession, label: ClusterTime,
                          send: MemoryObjectSendStream[list[bytes]],
                          failed: list[Exception]) -> None:
        """The reader task: raw batches of the chunk, in order, until its end. A read
        error ends the stream and is left in ``failed`` for the writer, so a sink
        transaction is never cancelled midway by a failed read."""
        cfg = self.config
        with send:
            try:
                async for batch in read_batches(self.client, ns, filter_,
                                                batch_size=min(cfg.batch_size,
                                                               cfg.read_batch_documents),
                                                session=session, after=label):
                    await send.send(batch)
            except Exception as exc:
                failed.append(exc)

    async def _write_chunk(self, chunk: ChunkRecord, label: ClusterTime, reader: int,
                           receive: MemoryObjectReceiveStream[list[bytes]],
                           failed: list[Exception]) -> bool:
        """The writer: sink batches of about ``batch_size`` documents (``batch_bytes`` at
        most, unless one read batch is larger). A group is written once the next read
        batch has arrived, so the last one is known and carries the chunk id."""
        cfg = self.config
        ns = chunk.namespace
        docs = nbytes = 0
        group: list[bytes] = []
        group_bytes = 0
        renew_every = min(cfg.lease_seconds / 4, cfg.progress_interval_seconds)
        renewed = time.monotonic()
        async for batch in receive:
            size = sum(len(d) for d in batch)
            if group and (len(group) >= cfg.batch_size
                          or group_bytes + size > cfg.batch_bytes):
                if self.stopping:
                    await self.store.release(chunk.id)
                    return False
                docs += len(group)
                nbytes += group_bytes
                if time.monotonic() - renewed >= renew_every:
                    if not await self.store.renew(chunk.id, docs=docs, nbytes=nbytes):
                        log.warning("lost the lease of a chunk; another worker copies it",
                                    extra={"fields": {"chunk": chunk.id}})
                        return False
                    renewed = time.monotonic()
                await self._write(ns, group, label, reader, None, group_bytes)
                group, group_bytes = [], 0
            group.extend(batch)
            group_bytes += size
        if failed:  # the read ended early: the chunk is not complete
            raise failed[0]
        return await self._finish(chunk, group, label, docs + len(group),
                                  nbytes + group_bytes, reader)

    async def _finish(self, chunk: ChunkRecord, last: list[bytes], label: ClusterTime,
                      docs: int, nbytes: int, reader: int) -> bool:
        """Write the chunk's last rows in the transaction that marks it done."""
        await self.store.renew(chunk.id, docs=docs, nbytes=nbytes)
        try:
            await self._write(chunk.namespace, last, label, reader, chunk.id)
        except InvariantError:
            if await self.store.exists(chunk.id):
                raise
            # The namespace was reset for a re-copy meanwhile: its new chunks cover this.
            log.info("chunk was replaced by a re-plan", extra={"fields": {"chunk": chunk.id}})
            return False
        self.copied_chunks += 1
        return True

    async def _acquire(self, count: int) -> None:
        """Throttle tokens for a chunk's batch; raises :class:`_Stopped` when a stop came
        first (before or during the wait)."""
        with anyio.CancelScope() as wait:
            self._throttle_waits.add(wait)
            try:
                if self.stopping:
                    wait.cancel()
                await self.throttle.acquire(count)
            finally:
                self._throttle_waits.discard(wait)
        if wait.cancelled_caught:
            raise _Stopped

    async def _write(self, ns: Namespace, docs: list[bytes], label: ClusterTime, reader: int,
                     chunk_id: int | None, nbytes: int | None = None, *,
                     chunk_copy: bool = True) -> None:
        if docs and chunk_copy:
            await self._acquire(len(docs))
        elif docs:
            await self.throttle.acquire(len(docs))
        # Enum members bound once: an attribute lookup on an Enum class costs about as
        # much as building the Change itself.
        version, upsert, origin = label.packed, Op.UPSERT, Origin.BACKFILL
        changes = [Change(ns, id_bson_from_raw(d), version, upsert, d, origin) for d in docs]
        await self.sink.apply(Batch(changes, chunk_id=chunk_id, reader=reader))
        if docs:
            self.copied_documents += len(docs)
            DOCUMENTS.labels(str(ns)).inc(len(docs))
            BYTES.labels(str(ns)).inc(sum(len(d) for d in docs) if nbytes is None else nbytes)

    # -- targeted copies -------------------------------------------------------------
    async def copy_ids(self, namespace: Namespace, ids: Sequence[Any]) -> int:
        """Copy the given ``_id`` values again now; ids that no longer exist are written
        as deletes at the read label (a later insert still wins). Returns upserts.
        A read lease that expired meanwhile (a pause past it) refuses the next write:
        the ids are read again under a new lease, as a chunk would be."""
        while True:
            try:
                return await self._copy_ids(namespace, ids)
            except ReadLeaseLost:
                log.warning("the read lease of a targeted copy expired; reading again",
                            extra={"fields": {"namespace": str(namespace)}})

    async def _copy_ids(self, namespace: Namespace, ids: Sequence[Any]) -> int:
        found = 0
        source = await self.locate(namespace)
        async with self._read_lease(namespace) as reader, \
                self.client.start_session(causal_consistency=False) as session:
            label = await read_label(self.client, source, session, self.stream_start,
                                     await self._applied(namespace))
            seen: set[bytes] = set()
            for start in range(0, len(ids), self.config.batch_size):
                part = list(ids[start:start + self.config.batch_size])
                async for batch in read_batches(self.client, source, {"_id": {"$in": part}},
                                                batch_size=self.config.batch_size,
                                                session=session, after=label):
                    seen.update(id_bson_from_raw(d) for d in batch)
                    found += len(batch)
                    await self._write(namespace, batch, label, reader, None,
                                      chunk_copy=False)
            missing = [bson.encode({"_id": v}) for v in ids]
            deletes = [Change(namespace, k, label.packed, Op.DELETE, None, Origin.BACKFILL)
                       for k in missing if k not in seen]
            if deletes:
                await self.sink.apply(Batch(deletes, reader=reader))
        return found

    async def sweep_stale(self, namespace: Namespace, schema: str, table: str,
                          before: ClusterTime) -> int:
        """After a full re-copy that started at ``before``: every row still older than
        that belongs to a document that did not exist when its chunk was read (deleted
        while the stream had lost its history). Each is re-read by ``_id`` and written
        again — an upsert if it exists after all, else a delete at the read label."""
        swept = 0
        after = b""
        while True:
            rows = await self.store.stale_ids(schema, table, before.packed, after=after,
                                              limit=self.config.batch_size)
            if not rows:
                return swept
            after = rows[-1][0]
            ids = [bson.decode(id_bson)["_id"] for _, id_bson in rows]
            await self.copy_ids(namespace, ids)
            swept += len(ids)

    # -- progress --------------------------------------------------------------------
    async def refresh_progress(self, progress_line: Callable[[str], None] | None = None
                               ) -> ProgressTracker:
        now = time.monotonic()
        for st in await self.store.status():
            self.tracker.update(st.namespace, estimated=st.estimated, copied=st.docs,
                                copied_bytes=st.bytes, total=st.total, done=st.done,
                                running=st.running, now=now)
        export(self.tracker)
        if progress_line is not None:
            progress_line(render_line(self.tracker))
        return self.tracker

    async def _report_loop(self, progress_line: Callable[[str], None] | None) -> None:
        while True:
            await anyio.sleep(self.config.progress_interval_seconds)
            await self._report(progress_line)

    async def _report(self, progress_line: Callable[[str], None] | None) -> None:
        """Refresh progress; a transient failure skips one report. The report shares the
        copy's task group: a lost control connection here must not end the copy, which
        retries its own steps (the next call reconnects)."""
        try:
            await self.refresh_progress(progress_line)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("backfill progress not refreshed", extra={"fields": {
                "error": type(exc).__name__}})
