"""Shared helpers of the backfill and daemon tests: the in-process pipeline and checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg import sql
from pymongo import AsyncMongoClient, MongoClient

from backfill.chunks import ChunkStore
from backfill.config import BackfillConfig
from backfill.worker import Backfill
from cdc.batch import Batch
from cdc.cursor import operation_time
from cdc.mapping import MappingConfig, resolve
from cdc.mapping.model import Mapper
from cdc.sink import Sink
from cdc.state import StreamState
from cdc.stream import StreamConfig, Tailer
from cdc.stream_config import DdlPolicy
from cdc.types import ClusterTime, Namespace
from ops.compare import Comparison, compare_all
from tests.integration.sink_support import expire_lease

CONTROL = "m2p_ctl"


def mapper_for(ns: Namespace) -> Mapper:
    return resolve(MappingConfig(), ns)


class HookedSink:
    """The real sink with a seam: ``hook`` runs before each batch is applied."""

    def __init__(self, sink: Any, hook: Callable[[Batch], Awaitable[None]]) -> None:
        self.sink = sink
        self.hook = hook

    async def apply(self, batch: Batch) -> Any:
        await self.hook(batch)
        return await self.sink.apply(batch)

    async def open_reader(self, namespace: Namespace, holder: str, lease_seconds: float
                          ) -> int:
        reader: int = await self.sink.open_reader(namespace, holder, lease_seconds)
        return reader

    async def applied_time(self, namespace: Namespace) -> int | None:
        applied: int | None = await self.sink.applied_time(namespace)
        return applied

    async def renew_reader(self, reader: int) -> bool:
        renewed: bool = await self.sink.renew_reader(reader)
        return renewed

    async def close_reader(self, reader: int) -> None:
        await self.sink.close_reader(reader)


class ExpireFirstLease:
    """A :class:`HookedSink` hook: the first batch written under a read lease finds it
    expired (a pause past the lease); ``expired`` lists the leases it expired."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.expired: list[int] = []

    async def __call__(self, batch: Batch) -> None:
        if batch.reader is not None and not self.expired:
            self.expired.append(batch.reader)
            expire_lease(self.dsn, batch.reader)


class Pipeline:
    def __init__(self, client: AsyncMongoClient[Any], sink: Sink, tailer: Tailer,
                 store: ChunkStore, start: ClusterTime, dsn: str) -> None:
        self.client = client
        self.sink = sink
        self.tailer = tailer
        self.store = store
        self.start = start
        self.dsn = dsn

    def backfill(self, config: BackfillConfig, sink: Any = None) -> Backfill:
        """A backfill reading each namespace where the tailer's DDL decisions say."""
        return Backfill(client=self.client, sink=sink or self.sink, store=self.store,
                        config=config, stream_start=self.start,
                        locate=StreamState(self.sink.pool, CONTROL).locator("main"))

    async def server_time(self) -> ClusterTime:
        when = operation_time(await self.client.admin.command("ping"))
        assert when is not None
        return when

    async def caught_up(self) -> None:
        """Wait (20 s at most) until the tailer applied all the source had at this moment."""
        target = await self.server_time()
        with anyio.fail_after(20):
            while self.tailer.last_applied < target:  # noqa: ASYNC110 - polled by design
                await anyio.sleep(0.05)


@asynccontextmanager
async def pipeline(mongo_uri: str, dsn: str, include: list[str], owner: str = "test",
                   ddl_default: DdlPolicy = "mark") -> AsyncIterator[Pipeline]:
    """Sink + tailer (started, so the stream start is persisted) + chunk store."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    sink = await Sink.open(dsn, CONTROL, mapper_for, max_size=4)
    store = await ChunkStore.connect(dsn, CONTROL, owner, lease_seconds=30)
    tailer = Tailer(client=client, sink=sink, include=include,
                    config=StreamConfig(batch_max_ms=50, max_await_ms=100,
                                        ddl_default=ddl_default))
    try:
        async with anyio.create_task_group() as tg:
            start = await tg.start(tailer.run)
            yield Pipeline(client, sink, tailer, store, start, dsn)
            tg.cancel_scope.cancel()
    finally:
        await store.close()
        await sink.close()
        await client.close()


def compare(mongo_uri: str, dsn: str, namespaces: list[Namespace]) -> Comparison:
    mongo: MongoClient[Any]
    with MongoClient(mongo_uri) as mongo:
        return compare_all(mongo, dsn, namespaces, mapper_for)


def chunk_rows(dsn: str) -> list[tuple[Any, ...]]:
    """``(namespace, seq, status, attempts, docs)`` of every chunk."""
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql.SQL(
            "SELECT namespace, seq, status, attempts, docs FROM {}.chunks "
            "ORDER BY namespace, seq").format(sql.Identifier(CONTROL))).fetchall())
