"""DDL on watched namespaces under each policy; none ever deletes target data."""

from __future__ import annotations

import uuid
from typing import Any

import anyio

from cdc import metrics
from cdc.errors import TargetUnavailable
from cdc.retry import RetryPolicy
from cdc.state import StreamState
from cdc.stream import StreamConfig, Tailer
from tests.integration.test_stream import catch_up
from tests.support.tailing import CONTROL, differences, mongo, open_sink, pg_connect


def unique_db() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def rows(pg_dsn: str, table: str) -> int:
    conn = await pg_connect(pg_dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    finally:
        await conn.close()


def test_mark_policy_records_a_drop_and_stops_applying_to_the_table(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl={f"{db}.c": "mark"})
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.*"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i} for i in range(5)])
            await coll.drop()
            await coll.insert_one({"_id": "after-drop"})
            await client[db]["other"].insert_one({"_id": 1})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            marks = await StreamState(sink._pool, CONTROL).with_prefix("ddl:main:")
            assert marks[f"ddl:main:{db}.c"]["op"] == "drop"
            # A restarted tailer keeps the mark.
            again = Tailer(client=client, sink=sink, include=[f"{db}.*"], config=config)
            await client[db]["c"].insert_one({"_id": "after-restart"})
            await catch_up(again, client, step=True)
            await again.close()
        assert await rows(pg_dsn, f'"{db}"."c"') == 5  # kept, and nothing new applied
        assert await differences(client, pg_dsn, [f"{db}.other"]) == []
        await client.close()

    anyio.run(main)


def test_ignore_policy_keeps_applying_after_a_drop_without_deleting_rows(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"],
                            config=StreamConfig(batch_max_ms=50, max_await_ms=50,
                                                ddl_default="ignore"))
            await tailer.run_once()
            await coll.insert_many([{"_id": i} for i in range(3)])
            await coll.drop()
            await coll.insert_one({"_id": "again"})
            await catch_up(tailer, client, step=True)
            await tailer.close()
        assert await rows(pg_dsn, f'"{db}"."c"') == 4
        await client.close()

    anyio.run(main)


def test_follow_policy_applies_the_renamed_collection_to_the_old_table(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["old"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="follow")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.old"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "v": 0} for i in range(3)])
            await coll.rename("new")
            new = client[db]["new"]
            await new.update_one({"_id": 0}, {"$set": {"v": 1}})
            await new.insert_one({"_id": 3, "v": 3})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            # The alias survives a restart.
            again = Tailer(client=client, sink=sink, include=[f"{db}.old"], config=config)
            await new.delete_one({"_id": 1})
            await catch_up(again, client, step=True)
            await again.close()
        conn = await pg_connect(pg_dsn)
        try:
            query = f'SELECT _id, doc->>\'v\' AS v FROM "{db}"."old" ORDER BY _id'  # noqa: S608
            got = await conn.fetch(query)
        finally:
            await conn.close()
        assert [(r["_id"], r["v"]) for r in got] == [("0", "1"), ("2", "0"), ("3", "3")]
        await client.close()

    anyio.run(main)


def test_a_collection_re_created_under_a_followed_old_name_does_not_mix_into_its_table(
        mongo_uri: str, pg_dsn: str) -> None:
    """``old`` renamed to ``new`` under follow: ``new`` feeds the table of ``old``. A new
    collection then created as ``old`` would feed the same table and mix two collections'
    documents; it is not applied (a warning says so), before and after a restart."""
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="follow")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.*"], config=config)
            await tailer.run_once()
            await client[db]["old"].insert_many([{"_id": i, "v": "first"} for i in range(3)])
            await client[db]["old"].rename("new")
            await client[db]["old"].insert_many([{"_id": i, "v": "second"} for i in range(5)])
            await client[db]["new"].update_one({"_id": 0}, {"$set": {"v": "moved"}})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            again = Tailer(client=client, sink=sink, include=[f"{db}.*"], config=config)
            await client[db]["old"].update_many({}, {"$set": {"v": "second, later"}})
            await client[db]["new"].delete_one({"_id": 2})
            await catch_up(again, client, step=True)
            await again.close()
        conn = await pg_connect(pg_dsn)
        try:
            query = f'SELECT _id, doc->>\'v\' AS v FROM "{db}"."old" ORDER BY _id'  # noqa: S608
            got = [(r["_id"], r["v"]) for r in await conn.fetch(query)]
            other = await conn.fetchval(f"SELECT to_regclass('\"{db}\".\"new\"')::text")
        finally:
            await conn.close()
        assert got == [("0", "moved"), ("1", "first")]
        assert other is None
        await client.close()

    anyio.run(main)


def test_drop_database_invalidates_a_database_stream_without_wedging_it(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    invalidated = metrics.DDL_EVENTS.labels("", "invalidate")

    async def main() -> None:
        client = mongo(mongo_uri)
        before = invalidated._value.get()
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="ignore")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.*"], config=config)
            await tailer.run_once()
            await client[db]["c"].insert_many([{"_id": i} for i in range(3)])
            await client.drop_database(db)
            await client[db]["c"].insert_one({"_id": "reborn"})
            await catch_up(tailer, client, step=True)
            await tailer.close()
            assert invalidated._value.get() >= before + 1
            # And a restart from the checkpoint taken around the invalidate works too.
            again = Tailer(client=client, sink=sink, include=[f"{db}.*"], config=config)
            await client[db]["c"].insert_one({"_id": "after-restart"})
            await catch_up(again, client, step=True)
            await again.close()
        assert await rows(pg_dsn, f'"{db}"."c"') == 5  # nothing deleted, new ones applied
        await client.close()

    anyio.run(main)


class _FailFirstDdlPut(StreamState):
    """The real control-schema store; its first write of a DDL decision fails the way a
    lost PostgreSQL connection does (fault injection, the rest goes to PostgreSQL)."""

    failed = False

    async def put(self, key: str, value: Any) -> None:
        if not self.failed and key.startswith("ddl:"):
            self.failed = True
            raise TargetUnavailable("injected: connection lost while recording DDL")
        await super().put(key, value)


def test_mark_decision_is_persisted_even_when_its_first_write_fails(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="mark",
                              retry=RetryPolicy(initial_s=0.01, max_s=0.05))
        async with open_sink(pg_dsn) as sink:
            state = _FailFirstDdlPut(sink._pool, CONTROL)
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config,
                            state=state)
            async with anyio.create_task_group() as tg:
                await tg.start(tailer.run)
                await coll.insert_one({"_id": 1})
                await coll.drop()
                await catch_up(tailer, client)
                tg.cancel_scope.cancel()
            assert state.failed
            marks = await StreamState(sink._pool, CONTROL).with_prefix("ddl:main:")
            assert marks[f"ddl:main:{db}.c"]["op"] == "drop"
            # A restarted tailer keeps the mark: the re-created collection is not applied.
            await coll.insert_one({"_id": "re-created"})
            again = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await catch_up(again, client, step=True)
            await again.close()
        assert await rows(pg_dsn, f'"{db}"."c"') == 1
        await client.close()

    anyio.run(main)


def test_follow_applies_an_update_whose_lookup_ran_after_the_rename(
        mongo_uri: str, pg_dsn: str) -> None:
    """The tailer reads an update only after its collection was renamed: the lookup
    in the old name finds nothing, yet the update must land (fetched from the new name),
    not be dropped as if a delete followed."""
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["old"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="follow")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.old"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "v": 0} for i in range(3)])
            await catch_up(tailer, client, step=True)
            await coll.update_one({"_id": 0}, {"$set": {"v": 1}})
            await coll.delete_one({"_id": 1})
            await coll.rename("new")
            await catch_up(tailer, client, step=True)
            await tailer.close()
        conn = await pg_connect(pg_dsn)
        try:
            query = f'SELECT _id, doc->>\'v\' AS v FROM "{db}"."old" ORDER BY _id'  # noqa: S608
            got = await conn.fetch(query)
        finally:
            await conn.close()
        assert [(r["_id"], r["v"]) for r in got] == [("0", "1"), ("2", "0")]
        await client.close()

    anyio.run(main)


def test_mark_never_deletes_a_row_whose_update_was_looked_up_after_the_drop(
        mongo_uri: str, pg_dsn: str) -> None:
    """A null lookup because the collection was dropped is no delete: the row stays."""
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["c"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="mark")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.c"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "v": 0} for i in range(3)])
            await catch_up(tailer, client, step=True)
            await coll.update_one({"_id": 0}, {"$set": {"v": 1}})
            await coll.drop()
            await catch_up(tailer, client, step=True)
            await tailer.close()
        assert await rows(pg_dsn, f'"{db}"."c"') == 3
        await client.close()

    anyio.run(main)


def test_follow_applies_an_update_looked_up_after_two_renames(
        mongo_uri: str, pg_dsn: str) -> None:
    db = unique_db()

    async def main() -> None:
        client = mongo(mongo_uri)
        coll = client[db]["old"]
        async with open_sink(pg_dsn) as sink:
            config = StreamConfig(batch_max_ms=50, max_await_ms=50, ddl_default="follow")
            tailer = Tailer(client=client, sink=sink, include=[f"{db}.old"], config=config)
            await tailer.run_once()
            await coll.insert_many([{"_id": i, "v": 0} for i in range(2)])
            await catch_up(tailer, client, step=True)
            await coll.update_one({"_id": 0}, {"$set": {"v": 1}})
            await coll.rename("mid")
            await client[db]["mid"].rename("new")
            await client[db]["new"].update_one({"_id": 1}, {"$set": {"v": 2}})
            await catch_up(tailer, client, step=True)
            await tailer.close()
        conn = await pg_connect(pg_dsn)
        try:
            query = f'SELECT _id, doc->>\'v\' AS v FROM "{db}"."old" ORDER BY _id'  # noqa: S608
            got = await conn.fetch(query)
        finally:
            await conn.close()
        assert [(r["_id"], r["v"]) for r in got] == [("0", "1"), ("1", "2")]
        await client.close()

    anyio.run(main)
