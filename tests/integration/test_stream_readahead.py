"""Read-ahead: the next getMore runs while a full reply is decoded and applied."""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from cdc import readahead
from cdc.cursor import Reply
from cdc.events import ChangeEvent
from cdc.stream import StreamConfig, Tailer
from tests.integration.test_stream import catch_up
from tests.support.tailing import CommandLog, differences, mongo, open_sink, pg_connect


def test_rename_inside_full_replies_drops_the_cursor_only_after_the_read_ahead(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        client = mongo(mongo_uri)
        old = client[db]["old"]
        async with open_sink(pg_dsn) as sink:
            # Replies of 3 events: every reply is full while the backlog lasts, so each
            # step reads ahead, and the rename lands in the middle of one.
            config = StreamConfig(batch_max_events=3, batch_max_ms=50, max_await_ms=50,
                                  ddl_default="follow")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.old"], config=config)
            await tailer.run_once()
            for i in range(10):
                await old.insert_one({"_id": i, "v": 0})
            await old.rename("new")
            new = client[db]["new"]
            for i in range(10):
                await new.update_one({"_id": i}, {"$set": {"v": i + 1}})
            await new.delete_one({"_id": 4})
            await new.insert_one({"_id": 10, "v": 10})
            await catch_up(tailer, client, step=True)
            await tailer.close()
        conn = await pg_connect(pg_dsn)
        try:
            query = f'SELECT _id, doc->>\'v\' AS v FROM "{db}"."old" ORDER BY _id'  # noqa: S608
            got = {r["_id"]: r["v"] for r in await conn.fetch(query)}
        finally:
            await conn.close()
        want = {str(i): str(i + 1) for i in range(10) if i != 4} | {"10": "10"}
        assert got == want
        await client.close()

    anyio.run(main)


def test_a_backlog_larger_than_a_reply_converges_through_read_ahead_steps(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_events=7, batch_max_ms=50, max_await_ms=50)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "n": i} for i in range(50)])
            await coll.update_many({"_id": {"$lt": 20}}, {"$inc": {"n": 100}})
            await coll.delete_many({"_id": {"$gte": 40}})
            await catch_up(tailer, client, step=True)
            await tailer.close()
        assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        await client.close()

    anyio.run(main)


def test_replies_read_ahead_during_a_flush_are_applied_only_after_it_and_reread_on_restart(
        mongo_uri: str, pg_dsn: str) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_events=5, batch_max_ms=5000, max_await_ms=50)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await tailer.run_once()
            start = tailer.last_applied
            await coll.insert_many([{"_id": i, "n": i} for i in range(60)])
            # Step until a batch is committed and replies read ahead are left queued.
            with anyio.fail_after(30):
                while tailer.read_ahead_events == 0 or tailer.last_applied == start:
                    await tailer.run_once()
            queued = tailer.read_ahead_events
            conn = await pg_connect(pg_dsn)
            try:
                ids = [r["_id"] for r in await conn.fetch(
                    f'SELECT _id FROM "{db}"."c" ORDER BY _id::int')]  # noqa: S608
            finally:
                await conn.close()
            # What was read ahead is not applied: the table holds a prefix of the stream
            # that ends before the queued events.
            assert ids == [str(i) for i in range(len(ids))]
            assert len(ids) + queued <= 60
            await tailer.close()  # the queued replies are dropped with the cursor
            again = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await catch_up(again, client, step=True)
            await again.close()
        assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        await client.close()

    anyio.run(main)


def letters(getmores: CommandLog) -> list[str]:
    """The getMores logged since the last call: ``g`` sent, ``r`` answered."""
    new = getmores.events
    getmores.events = []
    return ["g" if kind == "started" else "r" for kind, _, _ in new]


def test_the_next_getmore_is_out_while_a_reply_read_ahead_is_decoded(
        mongo_uri: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = f"t{uuid.uuid4().hex[:10]}"
    getmores = CommandLog("getMore")
    log: list[str] = []
    plain = readahead.predecode

    async def logged(reply: Reply) -> list[ChangeEvent | None]:
        log.extend(letters(getmores))
        log.append("(")
        try:
            return await plain(reply)
        finally:
            log.extend(letters(getmores))
            log.append(")")

    monkeypatch.setattr(readahead, "predecode", logged)

    async def main() -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=10_000,
                                  event_listeners=[getmores])
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            # Replies of 1,000 events, up to 3 of them read ahead.
            config = StreamConfig(batch_max_events=3000, max_await_ms=50)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i} for i in range(9000)])
            await catch_up(tailer, client, step=True)
            await tailer.close()
        assert await differences(client, pg_dsn, [f"{db}.c"]) == []
        await client.close()

    anyio.run(main)
    log.extend(letters(getmores))
    # A reply read ahead (r) that more follow is decoded (between parentheses) once the
    # next getMore is out (g): "rg(", where reading then decoding gives "r()g".
    order = "".join(log)
    assert re.search(r"rg\(", order), order
