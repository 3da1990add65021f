"""What the tailer claims as applied: ``last_applied`` (and the lag computed from it).

From MongoDB 6.1 a large ``deleteMany`` is logged in batches of up to 10 deletes whose
events share one cluster time and carry no ``lsid`` (the sandbox does the same). A
batch of the tailer may end among them; ``last_applied`` must then stay one tick short
of their time until the rest are applied, since "every change up to this time is in
PostgreSQL" is what lag, catch-up checks and a cutover rely on.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
from pymongo import AsyncMongoClient

from cdc.stream import StreamConfig, Tailer
from cdc.types import ClusterTime
from tests.integration.test_stream import server_time
from tests.support.tailing import mongo, open_sink, pg_connect


async def _deletes(client: AsyncMongoClient[Any], db: str, start: ClusterTime,
                   n: int) -> dict[int, ClusterTime]:
    """The cluster time of each delete event (by ``_id``) of ``db.c`` from ``start``."""
    out: dict[int, ClusterTime] = {}
    async with await client[db]["c"].watch(start_at_operation_time=start.to_bson()) as cs:
        while len(out) < n:
            event = await cs.next()
            if event["operationType"] == "delete":
                out[event["documentKey"]["_id"]] = ClusterTime.from_bson(event["clusterTime"])
    return out


async def _ids(conn: Any, db: str) -> set[int]:
    """The ``_id`` of every row of ``db.c``'s table (none before the table exists)."""
    table = f'"{db}"."c"'
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return set()
    return {int(r[0]) for r in await conn.fetch(f"SELECT _id FROM {table}")}  # noqa: S608


def test_last_applied_never_claims_a_time_whose_batched_deletes_are_still_pending(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            # Batches of 7 events: most of them end inside a group of 10 deletes.
            config = StreamConfig(batch_max_events=7, batch_max_ms=50, max_await_ms=50)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await tailer.run_once()
            start = tailer.start_time
            await coll.insert_many([{"_id": i} for i in range(200)])
            await coll.delete_many({})
            deleted = await _deletes(client, db, start, 200)
            shared = len(deleted) - len(set(deleted.values()))
            assert shared > 100  # the deletes share cluster times
            target = await server_time(client)
            conn = await pg_connect(pg_dsn)
            claims = 0
            try:
                with anyio.fail_after(60):
                    while tailer.last_applied < target:
                        await tailer.run_once()
                        claimed = tailer.last_applied
                        present = await _ids(conn, db)
                        pending = sorted(i for i, t in deleted.items()
                                         if t <= claimed and i in present)
                        assert not pending, (claimed, pending)
                        claims += any(t == claimed for t in deleted.values())
            finally:
                await conn.close()
            await tailer.close()
            assert claims  # some claims stood exactly at a group's time
        await client.close()

    anyio.run(main)
