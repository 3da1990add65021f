"""The backfill against the sandbox (or a real replica set) and real PostgreSQL."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import anyio
import psycopg
import pytest
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from psycopg import sql
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import AutoReconnect

from backfill.config import BackfillConfig
from backfill.worker import Backfill, expand_namespaces
from cdc.batch import Batch, Origin
from cdc.types import ClusterTime, Namespace
from ops.compare import compare_all
from tests.integration.backfill_support import (
    CONTROL,
    ExpireFirstLease,
    HookedSink,
    chunk_rows,
    compare,
    mapper_for,
    pipeline,
)
from tests.support.tailing import FindRecorder

pytestmark = pytest.mark.anyio

SMALL = BackfillConfig(workers=3, chunk_documents=40, batch_size=15, samples_per_chunk=5,
                       progress_interval_seconds=0.2)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fresh_db() -> str:
    return f"bf_{uuid.uuid4().hex[:10]}"


def mixed_ids(n: int) -> list[Any]:
    ids: list[Any] = []
    for i in range(n):
        kind = i % 5
        ids.append([i, f"s{i:05d}", ObjectId(), Int64(10**10 + i),
                    datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=i)][kind])
    return ids


async def test_backfill_copies_mixed_id_types_and_empty_collections(
    mongo_uri: str, pg_dsn: str
) -> None:
    db = fresh_db()
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["mixed"].insert_many(
            [{"_id": i, "n": k, "nested": {"a": [k, {"b": str(i)}]}}
             for k, i in enumerate(mixed_ids(300))])
        await client[db].create_collection("empty")
        await client[db]["ints"].insert_many([{"_id": i, "v": i} for i in range(120)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.*"]) as p:
            namespaces = await expand_namespaces(client, [f"{db}.*"])
            assert [n.coll for n in namespaces] == ["empty", "ints", "mixed"]
            bf = p.backfill(SMALL)
            assert await bf.run(namespaces) is True
            assert bf.copied_documents == 420
            await p.caught_up()
        chunks = chunk_rows(pg_dsn)
        assert all(c[2] == "done" for c in chunks)
        assert len([c for c in chunks if c[0].endswith(".mixed")]) > 3
        assert sum(c[4] for c in chunks) == 420
        result = compare(mongo_uri, pg_dsn, namespaces)
        assert result.documents == 420 and result.mismatches == 0
    finally:
        await client.close()


async def test_backfill_never_resurrects_documents_deleted_between_read_and_write(
    mongo_uri: str, pg_dsn: str
) -> None:
    db = fresh_db()
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": 0} for i in range(200)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            touched: list[int] = []
            deleted: list[int] = []

            async def between_read_and_write(batch: Batch) -> None:
                """Delete and update documents the backfill has read but not written, and
                let the stream apply those changes first (the dangerous order)."""
                rows = [c for c in batch.changes if c.origin is Origin.BACKFILL]
                if not rows:
                    return
                import bson

                ids = [bson.decode(c.id_bson)["_id"] for c in rows]
                victims, updated = ids[0::4], ids[1::4]
                await client[db]["c"].delete_many({"_id": {"$in": victims}})
                await client[db]["c"].update_many({"_id": {"$in": updated}},
                                                  {"$set": {"v": 1}})
                touched.extend(victims + updated)
                deleted.extend(victims)
                await p.caught_up()

            bf = p.backfill(SMALL, sink=HookedSink(p.sink, between_read_and_write))
            assert await bf.run([ns])
            # And changes right after chunks were written: the stream still wins.
            await client[db]["c"].update_many({"v": 1}, {"$inc": {"v": 10}})
            await p.caught_up()
        assert len(touched) > 50
        result = compare(mongo_uri, pg_dsn, [ns])
        assert result.documents == 200 - len(deleted)
        assert result.mismatches == 0
    finally:
        await client.close()


async def test_collection_created_and_dropped_during_backfill_end_equal(
    mongo_uri: str, pg_dsn: str
) -> None:
    db = fresh_db()
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["stays"].insert_many([{"_id": i} for i in range(100)])
        await client[db]["goes"].insert_many([{"_id": i} for i in range(100)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.*"]) as p:
            namespaces = await expand_namespaces(client, [f"{db}.*"])
            bf = p.backfill(SMALL)
            async with anyio.create_task_group() as tg:
                tg.start_soon(bf.run, namespaces)
                await client[db]["goes"].drop()
                await client[db]["born"].insert_many([{"_id": i, "x": i} for i in range(50)])
            await p.caught_up()
        born = Namespace(db, "born")
        result = compare(mongo_uri, pg_dsn, [Namespace(db, "stays"), born])
        assert result.documents == 150 and result.mismatches == 0
        assert all(c[2] == "done" for c in chunk_rows(pg_dsn))
    finally:
        await client.close()


async def test_targeted_rebackfill_of_ids_and_of_a_namespace_repairs_the_target(
    mongo_uri: str, pg_dsn: str
) -> None:
    db = fresh_db()
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(300)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            bf = p.backfill(SMALL)
            assert await bf.run([ns])
            await p.caught_up()
            # Drift made behind the migrator's back (what verify would find).
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DELETE FROM {} WHERE _id IN ('1', '2', '250')").format(
                    sql.Identifier(db, "c")))
            assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 3
            # A list of ids: copied again now (one no longer exists: written as a delete).
            assert await bf.copy_ids(ns, [1, 2, 9999]) == 2
            assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 1
            # The whole namespace, from scratch.
            await bf.rebackfill([ns])
            again = p.backfill(SMALL)
            assert await again.run([ns])
            assert again.copied_documents == 300
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
        assert all(c[2] == "done" for c in chunk_rows(pg_dsn))
    finally:
        await client.close()



async def test_backfill_never_marks_a_chunk_done_when_its_read_failed_midway(
    mongo_uri: str, pg_dsn: str
) -> None:
    db = fresh_db()
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(30)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            config = BackfillConfig(workers=1, chunk_documents=1000, batch_size=10,
                                    read_batch_documents=10)
            bf = p.backfill(config)
            await bf.plan([ns])
            chunk = await p.store.claim([ns])
            assert chunk is not None
            raw = [doc.raw async for doc in client[db].get_collection(
                "c", codec_options=CodecOptions(document_class=RawBSONDocument)).find()]
            # The reader delivered two batches, then its read failed (the seam of the
            # reader task): the writer must not write the rest as the chunk's last rows.
            send, receive = anyio.create_memory_object_stream[list[bytes]](4)
            await send.send(raw[:10])
            await send.send(raw[10:20])
            send.close()
            reader = await p.sink.open_reader(ns, "test", 60)
            with receive, pytest.raises(AutoReconnect):
                await bf._write_chunk(chunk, p.start, reader, receive,
                                      [AutoReconnect("connection lost midway")])
        rows = chunk_rows(pg_dsn)
        assert "done" not in [r[2] for r in rows]
        assert [r[2] for r in rows if r[1] == chunk.seq] == ["running"]
        # Then a fresh claim copies it whole.
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            store = p.store
            await store.release(chunk.id)  # same owner name: hand it back
            assert await p.backfill(config).run([ns]) is True
        assert {r[2] for r in chunk_rows(pg_dsn)} == {"done"}
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
    finally:
        await client.close()


async def test_backfill_groups_read_batches_into_sink_batches_and_only_the_last_marks_done(
    mongo_uri: str, pg_dsn: str
) -> None:
    db = fresh_db()
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    applied: list[tuple[int, int | None]] = []

    async def record(batch: Batch) -> None:
        applied.append((len(batch.changes), batch.chunk_id))

    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(65)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            config = BackfillConfig(workers=1, chunk_documents=1000, batch_size=40,
                                    read_batch_documents=10)
            bf = p.backfill(config, sink=HookedSink(p.sink, record))
            await bf.plan([ns])
            chunk = await p.store.claim([ns])
            assert chunk is not None and chunk.lower is None and chunk.upper is None
            assert await bf.copy_chunk(chunk) is True
        # Reads of 10 documents, written in groups of at least 40 (whole read batches);
        # the rest goes with the chunk id once the reader reported the end.
        assert applied == [(40, None), (25, chunk.id)]
        assert [r[2] for r in chunk_rows(pg_dsn)] == ["done"]
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
    finally:
        await client.close()


async def test_chunk_whose_read_lease_expired_is_handed_back_and_copied_again(
    mongo_uri: str, pg_dsn: str
) -> None:
    """A pause past the read lease (here: the lease made to expire before a write)
    refuses the write; the chunk goes back to the pool and is copied again under a new
    lease, and no lease is left behind."""
    db = fresh_db()
    ns = Namespace(db, "c")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(60)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            expire = ExpireFirstLease(pg_dsn)
            bf = p.backfill(SMALL, sink=HookedSink(p.sink, expire))
            assert await bf.run([ns])
        assert expire.expired
        with psycopg.connect(pg_dsn) as conn:
            left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(CONTROL, "readers"))).fetchone()
        assert left == (0,)
        result = compare(mongo_uri, pg_dsn, [ns])
        assert result.documents == 60
        assert result.mismatches == 0
    finally:
        await client.close()


async def test_reads_under_a_lease_ask_for_a_snapshot_at_or_after_what_was_applied(
    mongo_uri: str, pg_dsn: str
) -> None:
    """The label's read and the chunk's reads carry ``afterClusterTime``: the label is
    not older than what the stream had applied when the lease opened (a delete applied
    without a tombstone), even where the server's majority snapshot lags."""
    db = fresh_db()
    ns = Namespace(db, "c")
    listener = FindRecorder()
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, event_listeners=[listener])
    try:
        await client[db]["c"].insert_many([{"_id": i} for i in range(30)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            await client[db]["c"].delete_one({"_id": 0})
            await p.caught_up()
            applied = await p.sink.applied_time(ns)
            assert applied is not None
            bf = Backfill(client=client, sink=p.sink, store=p.store, config=SMALL,
                          stream_start=p.start)
            assert await bf.copy_ids(ns, [1, 2]) == 2
            assert await bf.run([ns])
        reads = [f for f in listener.finds if "readConcern" in f]
        labels = [f for f in reads if f.get("limit") == 1 and "hint" not in f]
        chunks = [f for f in reads if "hint" in f]
        assert labels and chunks
        for find in reads:
            assert find["readConcern"]["level"] == "majority"
            assert ClusterTime.from_bson(find["readConcern"]["afterClusterTime"]).packed \
                >= applied
        assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
    finally:
        await client.close()


async def test_a_collection_renamed_under_follow_is_copied_from_its_new_name_to_its_table(
    mongo_uri: str, pg_dsn: str
) -> None:
    """Planned as ``a``, renamed to ``b`` before its chunks are read: the tailer follows
    the rename, and so does the backfill — it reads ``b`` into the table of ``a``."""
    db = fresh_db()
    old, new = Namespace(db, "a"), Namespace(db, "b")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        await client[db]["a"].insert_many([{"_id": i, "v": i} for i in range(300)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.*"], ddl_default="follow") as p:
            bf = p.backfill(SMALL)
            await bf.plan([old])
            await client[db]["a"].rename("b")
            await client[db]["b"].update_many({"_id": {"$lt": 10}}, {"$set": {"v": -1}})
            await p.caught_up()  # the tailer has recorded the rename it follows
            assert await bf.locate(old) == new
            assert await bf.run([old]) is True
            assert bf.copied_documents == 300
            await p.caught_up()
        with MongoClient[dict[str, Any]](mongo_uri) as mongo:
            # The documents of b, compared with the table of a.
            result = compare_all(mongo, pg_dsn, [new], lambda _: mapper_for(old))
        assert result.documents == 300 and result.mismatches == 0
    finally:
        await client.close()


@pytest.mark.parametrize("fault", [{"errorCode": 175}, {"closeConnection": True}],
                         ids=["cursor-killed", "connection-lost"])
async def test_a_chunk_whose_read_failed_midway_is_read_again(
    mongo_uri: str, pg_dsn: str, fault: dict[str, Any]
) -> None:
    """A rename or drop kills the cursors reading its collection (QueryPlanKilled, 175),
    a connection may drop: the chunk is handed back and read again, not the end of the
    backfill."""
    db = fresh_db()
    ns = Namespace(db, "c")
    app = f"bf-killed-{uuid.uuid4().hex[:6]}"
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, appname=app)
    try:
        await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(100)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
            config = BackfillConfig(workers=1, chunk_documents=1000, batch_size=10,
                                    read_batch_documents=10)
            bf = Backfill(client=client, sink=p.sink, store=p.store, config=config,
                          stream_start=p.start)
            await client.admin.command({
                "configureFailPoint": "failCommand", "mode": {"times": 1},
                "data": {"appName": app, "failCommands": ["getMore"], **fault}})
            assert await bf.run([ns]) is True
            await p.caught_up()
        chunks = [(r[2], r[3]) for r in chunk_rows(pg_dsn) if r[0] == str(ns)]
        assert {status for status, _ in chunks} == {"done"}
        assert sorted(attempts for _, attempts in chunks)[-2:] == [1, 2]  # one read again
        result = compare(mongo_uri, pg_dsn, [ns])
        assert result.documents == 100 and result.mismatches == 0
    finally:
        await client.close()


async def test_a_rename_under_follow_in_the_middle_of_a_chunk_read_is_followed(
    mongo_uri: str, pg_dsn: str
) -> None:
    """The rename kills the chunk's cursor (QueryPlanKilled); the chunk is read again,
    from the new name, and every document lands in the table of the old one."""
    db = fresh_db()
    old, new = Namespace(db, "a"), Namespace(db, "b")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    try:
        # Chunks of about 190 documents read 10 at a time: a chunk's cursor is still open
        # when its first batch is written (the reader runs at most a few batches ahead).
        await client[db]["a"].insert_many([{"_id": i, "v": i} for i in range(1500)])
        async with pipeline(mongo_uri, pg_dsn, [f"{db}.*"], ddl_default="follow") as p:
            renamed: list[bool] = []

            async def rename_once(batch: Batch) -> None:
                if not renamed and batch.changes:
                    renamed.append(True)
                    await client[db]["a"].rename("b")
                    await p.caught_up()  # the tailer has recorded the rename

            config = BackfillConfig(workers=1, chunk_documents=1000, batch_size=10,
                                    read_batch_documents=10)
            bf = p.backfill(config, sink=HookedSink(p.sink, rename_once))
            assert await bf.run([old]) is True
            await p.caught_up()
        assert renamed
        chunks = [r for r in chunk_rows(pg_dsn) if r[0] == str(old)]
        assert max(r[3] for r in chunks) == 2  # the chunk being read was read again
        with MongoClient[dict[str, Any]](mongo_uri) as mongo:
            result = compare_all(mongo, pg_dsn, [new], lambda _: mapper_for(old))
        assert result.documents == 1500 and result.mismatches == 0
    finally:
        await client.close()
