"""Faults around read leases (cdc.sink.readers): writes older than a delete applied
without a tombstone must never land.

* Two appliers of one stream. Every ``mongo2pg run`` process starts its own tailer, all
  on the stream ``main`` with one shared checkpoint row (``test_daemon_shared``). A
  lagging tailer could apply an event older than a delete the other had applied without
  a tombstone, and after a restart resume past that delete. The sink's stream fence
  (``Batch.after``: a batch whose stream was committed past its start is refused, the
  tailer goes on from the stored checkpoint) keeps the stream applied in order.
* PostgreSQL's clock stepping back must not revive a lease a delete saw expired.
* A throttled backfill whose batches outlast the lease must still end (the lease is
  kept alive while the read runs).
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import psycopg
from psycopg import sql
from pymongo import AsyncMongoClient

from backfill.config import BackfillConfig
from cdc import metrics
from cdc.batch import Batch, Origin
from cdc.cursor import operation_time
from cdc.errors import ReadLeaseLost
from cdc.sink import Sink
from cdc.stream import StreamConfig, Tailer
from cdc.types import ClusterTime, Namespace
from tests.integration.backfill_support import compare, pipeline
from tests.integration.sink_support import (
    CONTROL,
    NS,
    delete,
    expire_lease,
    mapper_for,
    rows,
    upsert,
)
from tests.support.tailing import differences, mongo, open_sink

FAST = StreamConfig(batch_max_events=200, batch_max_ms=50, max_await_ms=50)
ONE = StreamConfig(batch_max_events=1, batch_max_ms=50, max_await_ms=50)


async def server_time(client: AsyncMongoClient[Any]) -> ClusterTime:
    when = operation_time(await client.admin.command("ping"))
    assert when is not None
    return when


async def catch_up(tailer: Tailer, client: AsyncMongoClient[Any]) -> None:
    target = await server_time(client)
    with anyio.fail_after(30):
        while tailer.last_applied < target:
            await tailer.run_once()


def test_two_daemons_tailing_one_stream_never_resurrect_a_deleted_document(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"
    ns = f"{db}.c"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        # Two daemons (two sinks, one control schema), each with its tailer on 'main'.
        async with open_sink(pg_dsn) as sink_one, open_sink(pg_dsn) as sink_two:
            fast = Tailer(client=client, sink=sink_one, include=[ns], config=FAST)
            slow = Tailer(client=client, sink=sink_two, include=[ns], config=ONE)
            await fast.run_once()  # records the stream start and the first checkpoint
            await slow.run_once()  # the second daemon starts from that checkpoint
            async with client.start_session() as session:
                await coll.insert_one({"_id": 1, "v": "x"}, session=session)
                assert session.operation_time is not None
                inserted = ClusterTime.from_bson(session.operation_time)
                await coll.delete_one({"_id": 1}, session=session)
                assert session.operation_time is not None
                deleted = ClusterTime.from_bson(session.operation_time)
            # The first daemon applies the insert and the delete (no read lease is live:
            # no tombstone) and moves the shared checkpoint past the delete.
            await catch_up(fast, client)
            await fast.close()
            # The second daemon lags: its batch with the insert (one event per batch)
            # starts before what the first one committed, so it is refused, and it goes
            # on from the shared checkpoint, past the delete ...
            refused = metrics.RETRIES.labels("main")._value.get()
            with anyio.fail_after(30):
                while slow.last_applied < inserted:
                    await slow.run_once()
            assert metrics.RETRIES.labels("main")._value.get() == refused + 1
            assert slow.last_applied >= deleted
            assert await differences(client, pg_dsn, [ns]) == []
            # ... and a restart (SIGTERM between two batches, a deploy) changes nothing.
            await slow.close()
            restarted = Tailer(client=client, sink=sink_two, include=[ns], config=FAST)
            await catch_up(restarted, client)
            await restarted.close()
        assert await differences(client, pg_dsn, [ns]) == []
        await client.close()

    anyio.run(main)


# -- the lease's expiry is judged by PostgreSQL's wall clock ----------------------------
# A delete that found a lease expired leaves no tombstone; that is safe only if the lease
# can never be renewed afterwards. ``renew`` re-checks ``expires_at > clock_timestamp()``,
# a wall clock: if it steps back (an NTP/chrony step, a VM resume, a failover to a
# standby whose clock is behind) past the expiry the delete saw, the lease is live again
# and the read's older rows land. Moving ``expires_at`` forward by the step is the same
# comparison as moving the clock back by it.

def _step_clock_back(dsn: str, reader: int, seconds: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "UPDATE {} SET expires_at = expires_at + make_interval(secs => %s)"
            " WHERE id = %s").format(sql.Identifier(CONTROL, "readers")), (seconds, reader))


def test_a_lease_a_delete_saw_expired_stays_dead_when_the_clock_steps_back(
        pg_dsn: str) -> None:
    async def main() -> None:
        sink = await Sink.open(pg_dsn, CONTROL, mapper_for, max_size=2)
        try:
            await sink.apply(Batch([upsert(1, 10)]))
            reader = await sink.open_reader(NS, "worker", 60)  # then the read: label 12
            expire_lease(pg_dsn, reader)  # a pause past 60 s
            await sink.apply(Batch([delete(1, 15)]))  # saw it expired: no tombstone
            _step_clock_back(pg_dsn, reader, 120)  # PostgreSQL's clock steps back 2 min
            try:
                await sink.apply(Batch([upsert(1, 12, origin=Origin.BACKFILL)],
                                       reader=reader))
            except ReadLeaseLost:
                pass
            assert rows(pg_dsn) == {}
        finally:
            await sink.close()

    anyio.run(main)


# -- a throttled backfill outlives its read lease between writes --------------------------
# The read lease is renewed only by the chunk's writes (Sink.renew_reader exists, but the
# worker never calls it), and Backfill._write waits for the throttle *before* the write.
# When one batch's share of the throttle (batch_size / throttle_docs_per_second, times
# the workers sharing it) is longer than lease_seconds — e.g. the defaults batch_size
# 10000 and lease_seconds 60 with throttle_docs_per_second = 150 — every chunk's lease
# expires before its second write: ReadLeaseLost, the chunk is handed back, claimed
# again, and the same happens again. The backfill never ends (it did before leases:
# the chunk lease is renewed before a write that follows a long pause).

def test_a_throttled_backfill_whose_batches_take_longer_than_the_lease_still_ends(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"bf_{uuid.uuid4().hex[:10]}"
    ns = Namespace(db, "c")
    # One batch of 20 documents costs 2 s of a 10 docs/s throttle; the lease is 1.5 s.
    config = BackfillConfig(workers=1, chunk_documents=1000, batch_size=20,
                            read_batch_documents=20, samples_per_chunk=2,
                            throttle_docs_per_second=10, lease_seconds=1.5,
                            progress_interval_seconds=0.2)

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        try:
            await client[db]["c"].insert_many([{"_id": i, "v": i} for i in range(50)])
            async with pipeline(mongo_uri, pg_dsn, [f"{db}.c"]) as p:
                bf = p.backfill(config)
                with anyio.fail_after(30):  # about 6 s of throttle without leases
                    assert await bf.run([ns])
            assert compare(mongo_uri, pg_dsn, [ns]).mismatches == 0
        finally:
            await client.close()

    anyio.run(main)
