"""Change events too large to return (BSONObjectTooLarge, code 10334): read without the
split stage, each is pinned down exactly, dead-lettered with its ``documentKey`` in the
same transaction as its checkpoint, and re-fetched by ``_id``; the stream never dies.

An update of a 9 MB document that rewrites its 9 MB field makes an event carrying both
``updateDescription`` and the ``updateLookup`` document: over 16 MiB, on a real server
as on the sandbox."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import bson
from pymongo import AsyncMongoClient

from cdc.batch import Batch
from cdc.errors import TargetUnavailable
from cdc.retry import RetryPolicy
from cdc.stream import StreamConfig, Tailer
from cdc.types import ClusterTime
from tests.integration.test_stream import catch_up
from tests.support.tailing import CONTROL, RecordingSink, differences, open_sink, pg_connect

CONFIG = StreamConfig(batch_max_events=100, batch_max_ms=50, max_await_ms=50,
                      split_large_events=False,
                      retry=RetryPolicy(initial_s=0.01, max_s=0.1, max_attempts=20))
BIG = 9_000_000


def unique_db() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def letters(pg_dsn: str) -> list[tuple[Any, bool]]:
    """(``_id``, resolved) of every dead letter, oldest first."""
    conn = await pg_connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f"SELECT id_bson, resolved_at FROM {CONTROL}.dead_letters ORDER BY id")  # noqa: S608
    finally:
        await conn.close()
    return [(bson.decode(bytes(r["id_bson"]))["_id"], r["resolved_at"] is not None)
            for r in rows]


def test_two_oversized_events_in_a_row_are_each_dead_lettered_and_refetched(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(pg_dsn) as sink:
                tailer = Tailer(client=client, sink=sink, include=[ns], config=CONFIG)
                await tailer.run_once()
                await coll.insert_one({"_id": 1, "v": "a" * BIG})
                await coll.insert_one({"_id": 2, "v": "x"})
                await catch_up(tailer, client, step=True)
                await coll.update_one({"_id": 1}, {"$set": {"v": "b" * BIG}})
                await coll.update_one({"_id": 1}, {"$set": {"v": "c" * BIG}})
                await coll.update_one({"_id": 2}, {"$set": {"v": "y"}})
                await catch_up(tailer, client, step=True)
                await tailer.close()
            assert await letters(pg_dsn) == [(1, True), (1, True)]
            assert await differences(client, pg_dsn, [ns]) == []
        finally:
            await client.close()

    anyio.run(main)


def test_an_oversized_event_first_after_a_restart_does_not_stop_run(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(pg_dsn) as sink:
                tailer = Tailer(client=client, sink=sink, include=[ns], config=CONFIG)
                await tailer.run_once()
                await coll.insert_one({"_id": 1, "v": "a" * BIG})
                await catch_up(tailer, client, step=True)
                await tailer.close()
                await coll.update_one({"_id": 1}, {"$set": {"v": "b" * BIG}})
                await coll.insert_one({"_id": 2, "v": "after"})
                again = Tailer(client=client, sink=sink, include=[ns], config=CONFIG)
                async with anyio.create_task_group() as tg:
                    await tg.start(again.run)
                    await catch_up(again, client)
                    tg.cancel_scope.cancel()
            assert await letters(pg_dsn) == [(1, True)]
            assert await differences(client, pg_dsn, [ns]) == []
        finally:
            await client.close()

    anyio.run(main)


def test_a_normal_event_read_ahead_of_an_oversized_one_is_applied_not_dead_lettered(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(pg_dsn) as sink:
                tailer = Tailer(client=client, sink=sink, include=[ns], config=CONFIG)
                await tailer.run_once()
                await coll.insert_one({"_id": 1, "v": "a" * BIG})
                await catch_up(tailer, client, step=True)
                await coll.insert_one({"_id": "small", "v": 1})
                await coll.update_one({"_id": 1}, {"$set": {"v": "b" * BIG}})
                await coll.insert_one({"_id": "after", "v": 2})
                await catch_up(tailer, client, step=True)
                await tailer.close()
            assert await letters(pg_dsn) == [(1, True)]
            assert await differences(client, pg_dsn, [ns]) == []
        finally:
            await client.close()

    anyio.run(main)


class _FailNextApply:
    """The real sink; once armed, its next batch with changes fails like a lost
    connection (fault injection; everything else goes to PostgreSQL)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.pool, self.control_schema = inner, inner._pool, CONTROL
        self.armed, self.failed = False, 0

    async def apply(self, batch: Batch) -> Any:
        return await (await self.stage(batch)).commit()

    async def stage(self, batch: Batch) -> Any:
        if self.armed and batch.changes:
            self.armed = False
            self.failed += 1
            raise TargetUnavailable("injected: connection lost while applying")
        return await self.inner.stage(batch)

    async def load_checkpoint(self, stream: str) -> Any:
        return await self.inner.load_checkpoint(stream)


def test_the_dead_letter_of_an_oversized_event_commits_only_with_its_batch(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(pg_dsn) as real:
                sink = _FailNextApply(real)
                tailer = Tailer(client=client, sink=sink, include=[ns], config=CONFIG)
                async with anyio.create_task_group() as tg:
                    await tg.start(tailer.run)
                    await coll.insert_one({"_id": 1, "v": "a" * BIG})
                    await catch_up(tailer, client)
                    sink.armed = True
                    await coll.update_one({"_id": 1}, {"$set": {"v": "b" * BIG}})
                    await catch_up(tailer, client)
                    tg.cancel_scope.cancel()
                assert sink.failed == 1
            assert await letters(pg_dsn) == [(1, True)]  # one letter, not one per attempt
            assert await differences(client, pg_dsn, [ns]) == []
        finally:
            await client.close()

    anyio.run(main)


def test_a_source_transaction_with_an_oversized_event_is_applied_in_one_batch(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        coll = client[db]["c"]
        try:
            async with open_sink(pg_dsn) as real:
                sink = RecordingSink(real)
                tailer = Tailer(client=client, sink=sink, include=[ns], config=CONFIG)
                await tailer.run_once()
                await coll.insert_many([{"_id": 1, "v": "a" * BIG}, {"_id": 2, "v": "a" * BIG}])
                await catch_up(tailer, client, step=True)
                # One transaction: small inserts around two updates whose events are over
                # 16 MiB (each pinned down and re-fetched by _id).
                async with client.start_session() as session:
                    async with await session.start_transaction():
                        await coll.insert_one({"_id": "before"}, session=session)
                        await coll.update_one({"_id": 1}, {"$set": {"v": "b" * BIG}},
                                              session=session)
                        await coll.insert_one({"_id": "between"}, session=session)
                        await coll.update_one({"_id": 2}, {"$set": {"v": "b" * BIG}},
                                              session=session)
                        await coll.insert_one({"_id": "after"}, session=session)
                    assert session.operation_time is not None
                    committed = ClusterTime.from_bson(session.operation_time)
                # Once the tailer says the transaction's time is applied, all of it is.
                with anyio.fail_after(30):
                    while tailer.last_applied < committed:
                        await tailer.run_once()
                assert await differences(client, pg_dsn, [ns]) == []
                await tailer.close()
            batches = [sorted(str(bson.decode(c.id_bson)["_id"]) for c in b.changes)
                       for b in sink.batches if b.changes]
            assert ["1", "2", "after", "before", "between"] in batches, batches
            assert await letters(pg_dsn) == [(1, True), (2, True)]
        finally:
            await client.close()

    anyio.run(main)
