"""The tailer against the sandbox (or a real replica set) and real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import bson
from pymongo import AsyncMongoClient

from cdc import metrics
from cdc.batch import Op
from cdc.cursor import operation_time
from cdc.mapping import ColumnRule, MappingConfig, MappingRule, resolve
from cdc.state import StreamState
from cdc.stream import StreamConfig, Tailer
from cdc.types import ClusterTime
from tests.support.tailing import (
    CONTROL,
    CommandLog,
    FindRecorder,
    RecordingSink,
    checkpoint_time,
    differences,
    mongo,
    open_sink,
)
from tests.support.workload import run_workload

FAST = StreamConfig(batch_max_events=200, batch_max_ms=50, max_await_ms=50)


def unique_db() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def server_time(client: AsyncMongoClient[Any]) -> ClusterTime:
    when = operation_time(await client.admin.command("ping"))
    assert when is not None
    return when


async def catch_up(tailer: Tailer, client: AsyncMongoClient[Any], *, step: bool = False
                   ) -> None:
    """Wait (stepping the tailer if asked) until it applied past the server's time now."""
    target = await server_time(client)
    with anyio.fail_after(30):
        while tailer.last_applied < target:
            if step:
                await tailer.run_once()
            else:
                await anyio.sleep(0.02)


async def lag_settles_to_zero(tailer: Tailer, *, step: bool = False) -> bool:
    """Whether lag reads 0 once caught up (a real server's periodic no-op writes may need
    one more empty batch to be passed)."""
    with anyio.move_on_after(15):
        while True:
            if await tailer.lag_seconds() == 0:
                return True
            if step:
                await tailer.run_once()
            else:
                await anyio.sleep(0.05)
    return False


def test_random_workload_while_tailing_ends_equal_document_by_document(
        mongo_uri: str, pg_dsn: str) -> None:
    db, other = unique_db(), unique_db()
    namespaces = [f"{db}.orders", f"{db}.items", f"{other}.users"]

    async def main() -> None:
        client = mongo(mongo_uri)
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.*", f"{other}.users"],
                            config=FAST)
            async with anyio.create_task_group() as tg:
                await tg.start(tailer.run)
                await run_workload(client, namespaces, ops=600, seed=11)
                await catch_up(tailer, client)
                assert await lag_settles_to_zero(tailer)
                tg.cancel_scope.cancel()
        assert await differences(client, pg_dsn, namespaces) == []
        await client.close()

    anyio.run(main)


def test_stream_start_is_recorded_before_the_tailer_reports_started(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        before = await server_time(client)
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=FAST)
            async with anyio.create_task_group() as tg:
                started = await tg.start(tailer.run)
                state = StreamState(sink._pool, CONTROL)
                assert await state.stream_start("main") == started
                assert started >= before
                assert await checkpoint_time(pg_dsn) == started.packed
                tg.cancel_scope.cancel()
        await client.close()

    anyio.run(main)


def test_a_new_stream_starts_at_the_majority_committed_point(
        mongo_uri: str, pg_dsn: str) -> None:
    """A new stream starts at the operationTime of a majority read (its committed
    snapshot's time), not at ping's (the last applied write, which an election may roll
    back: the new primary may then write at earlier times, which the stream would skip)."""
    db = unique_db()
    log = CommandLog("find", "ping", "aggregate")

    async def main() -> ClusterTime:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, event_listeners=[log])
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=FAST)
            await tailer.run_once()
            await tailer.close()
        await client.close()
        return tailer.start_time

    start = anyio.run(main)
    opened = next(n for n, (_, name, _) in enumerate(log.events) if name == "aggregate")
    before = log.events[:opened]
    assert not [e for e in before if e[1] == "ping"]
    finds = [(kind, cmd) for kind, name, cmd in before if name == "find"]
    assert [kind for kind, _ in finds] == ["started", "succeeded"]
    assert finds[0][1]["readConcern"] == {"level": "majority"}
    answered = finds[1][1]["operationTime"]
    assert start == ClusterTime(answered.time, answered.inc)
    assert log.events[opened][2]["pipeline"][0]["$changeStream"]["startAtOperationTime"] \
        == answered


def test_writes_made_while_the_tailer_was_down_are_applied_after_restart(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            first = Tailer(client=client, sink=sink, include=[ns], config=FAST)
            await first.run_once()
            await coll.insert_many([{"_id": i, "v": i} for i in range(20)])
            await catch_up(first, client, step=True)
            await first.close()
            # Down: nothing reads the stream while these happen.
            await coll.update_many({"_id": {"$lt": 10}}, {"$set": {"v": "changed"}})
            await coll.delete_many({"_id": {"$gte": 15}})
            await coll.insert_one({"_id": "new", "v": 1})
            second = Tailer(client=client, sink=sink, include=[ns], config=FAST)
            await catch_up(second, client, step=True)
            await second.close()
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    anyio.run(main)


def test_a_source_transaction_lands_in_one_batch_even_above_the_size_limit(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        await coll.insert_one({"_id": "warm"})
        async with open_sink(pg_dsn) as real:
            sink = RecordingSink(real)
            tailer = Tailer(client=client, sink=sink, include=[ns],
                            config=StreamConfig(batch_max_events=2, batch_max_ms=50,
                                                max_await_ms=50))
            await tailer.run_once()
            async with client.start_session() as session, await session.start_transaction():
                await coll.insert_many([{"_id": i} for i in range(7)], session=session)
            await coll.insert_one({"_id": "after"})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            txn_batches = [b for b in sink.batches
                           if any(bson.decode(c.id_bson)["_id"] in range(7) for c in b.changes)]
            assert len(txn_batches) == 1
            ids = {bson.decode(c.id_bson)["_id"] for c in txn_batches[0].changes}
            assert set(range(7)) <= ids
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    anyio.run(main)


def test_a_quiet_watched_collection_keeps_its_checkpoint_advancing(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.quiet"], config=FAST)
            await tailer.run_once()
            start = await checkpoint_time(pg_dsn)
            assert start is not None
            for i in range(5):
                await client[db]["busy"].insert_many([{"k": i, "j": j} for j in range(50)])
                await anyio.sleep(1.0 if i == 2 else 0)  # cross a second of cluster time
            busy_done = await server_time(client)
            await catch_up(tailer, client, step=True)
            after = await checkpoint_time(pg_dsn)
            assert after is not None and after >= busy_done.packed > start
            assert await lag_settles_to_zero(tailer, step=True)
            await tailer.close()
            conn_tables = await sink._pool.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1", db)
            assert conn_tables == 0  # nothing of the busy collection was written
        await client.close()

    anyio.run(main)


def test_update_whose_document_is_gone_at_lookup_is_settled_by_the_delete(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as real:
            sink = RecordingSink(real)
            tailer = Tailer(client=client, sink=sink, include=[ns], config=FAST)
            await tailer.run_once()
            await coll.insert_one({"_id": 1, "v": 0})
            for v in range(1, 4):
                await coll.update_one({"_id": 1}, {"$set": {"v": v}})
            await coll.delete_one({"_id": 1})
            await coll.insert_one({"_id": 2, "v": 0})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            ops = [c.op for b in sink.batches for c in b.changes
                   if bson.decode(c.id_bson)["_id"] == 1]
            assert ops[-1] is Op.DELETE
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    anyio.run(main)


def test_an_event_over_16_mib_arrives_in_fragments_and_is_applied_whole(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        await coll.insert_one({"_id": 1, "a": "x" * (9 << 20)})
        async with open_sink(pg_dsn) as real:
            sink = RecordingSink(real)
            tailer = Tailer(client=client, sink=sink, include=[ns], config=FAST)
            await tailer.run_once()
            # updateDescription (9 MiB) + looked-up document (9 MiB) > 16 MiB.
            await coll.update_one({"_id": 1}, {"$set": {"a": "y" * (9 << 20)}})
            await coll.insert_one({"_id": 2})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            docs = [c.doc for b in sink.batches for c in b.changes
                    if bson.decode(c.id_bson)["_id"] == 1]
            assert docs and docs[-1] is not None
            assert bson.decode(docs[-1])["a"] == "y" * (9 << 20)
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    anyio.run(main)


def test_an_unmappable_document_is_dead_lettered_and_the_stream_goes_on(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"
    mapping = MappingConfig(rules=(MappingRule(namespace=ns, mode="column",
                                               columns=(ColumnRule("n", "bigint"),)),))
    lettered = metrics.DEAD_LETTERS.labels(ns)

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        before = lettered._value.get()
        async with open_sink(pg_dsn, lambda n: resolve(mapping, n)) as sink:
            tailer = Tailer(client=client, sink=sink, include=[ns], config=FAST)
            await tailer.run_once()
            await coll.insert_many([{"_id": 1, "n": 1}, {"_id": 2, "n": "not a number"},
                                    {"_id": 3, "n": 3}])
            await catch_up(tailer, client, step=True)
            await tailer.close()
            letters = await sink._pool.fetch(
                f"SELECT namespace, id_bson FROM {CONTROL}.dead_letters")  # noqa: S608
            kept = await sink._pool.fetch(f'SELECT n FROM "{db}"."c" ORDER BY n')  # noqa: S608
        assert [(r["namespace"], bson.decode(r["id_bson"])) for r in letters] \
            == [(ns, {"_id": 2})]
        assert [r["n"] for r in kept] == [1, 3]
        assert lettered._value.get() == before + 1
        await client.close()

    anyio.run(main)


def test_post_image_mode_refetches_an_update_whose_image_is_missing(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()
    ns = f"{db}.c"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        await client[db].create_collection("c")  # no changeStreamPreAndPostImages
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50,
                                  full_document="whenAvailable")
            tailer = Tailer(client=client, sink=sink, include=[ns], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "v": 0} for i in range(5)])
            await coll.update_many({}, {"$set": {"v": 1}})
            await coll.delete_one({"_id": 4})
            await catch_up(tailer, client, step=True)
            await tailer.close()
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    anyio.run(main)


def test_refetched_documents_are_read_with_majority_read_concern(
        mongo_uri: str, pg_dsn: str) -> None:
    """Content used for a change must not be rolled back later: re-fetches by ``_id``
    read with ``readConcern: majority``."""
    db = unique_db()
    ns = f"{db}.c"
    recorder = FindRecorder()

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, event_listeners=[recorder])
        coll = client[db]["c"]
        await client[db].create_collection("c")  # no changeStreamPreAndPostImages
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50,
                                  full_document="whenAvailable")
            tailer = Tailer(client=client, sink=sink, include=[ns], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "v": 0} for i in range(3)])
            await coll.update_many({}, {"$set": {"v": 1}})
            await catch_up(tailer, client, step=True)
            await tailer.close()
        refetches.extend(recorder.finds)  # the tailer's finds (not the comparison's)
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    refetches: list[dict[str, Any]] = []
    anyio.run(main)
    assert len(refetches) >= 3
    assert all(f.get("readConcern", {}).get("level") == "majority" for f in refetches)
