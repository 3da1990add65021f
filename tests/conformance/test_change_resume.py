"""Where change streams start and resume, and what every batch reports."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.conformance.streams import take

Db = Database[dict[str, Any]]


def _ids(events: list[dict[str, Any]]) -> list[Any]:
    return [e["documentKey"]["_id"] for e in events]


def test_resume_after_continues_right_after_the_token(db: Db) -> None:
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.insert_many([{"_id": i} for i in range(3)])
        first = take(stream, 1)[0]
    db.c.insert_one({"_id": 3})
    with db.c.watch(resume_after=first["_id"], max_await_time_ms=100) as resumed:
        assert _ids(take(resumed, 3)) == [1, 2, 3]


def test_start_at_operation_time_includes_that_event(db: Db) -> None:
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.insert_many([{"_id": i} for i in range(3)])
        events = take(stream, 3)
    with db.c.watch(start_at_operation_time=events[1]["clusterTime"],
                    max_await_time_ms=100) as again:
        assert _ids(take(again, 2)) == [1, 2]


def test_resume_tokens_sort_in_event_order(db: Db) -> None:
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.insert_many([{"_id": i} for i in range(5)])
        tokens = [e["_id"]["_data"] for e in take(stream, 5)]
    assert tokens == sorted(tokens) and len(set(tokens)) == 5


def test_start_after_passes_an_invalidate_but_resume_after_cannot(db: Db) -> None:
    db.c.insert_one({"_id": 1})
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.drop()
        _, invalidate = take(stream, 2)
    db.c.insert_one({"_id": 2})
    with db.c.watch(start_after=invalidate["_id"], max_await_time_ms=100) as after:
        events = take(after, 1)
        assert events[0]["operationType"] == "insert" and _ids(events) == [2]
    with pytest.raises(OperationFailure), db.c.watch(resume_after=invalidate["_id"]) as bad:
        bad.try_next()


def test_post_batch_resume_token_on_every_batch_even_empty(db: Db) -> None:
    db.create_collection("c")
    reply = db.command("aggregate", "c", pipeline=[{"$changeStream": {}}], cursor={})
    cursor = reply["cursor"]
    assert cursor["firstBatch"] == [] and "postBatchResumeToken" in cursor
    first_token = cursor["postBatchResumeToken"]
    db.other.insert_one({"_id": "noise"})
    more = db.command("getMore", cursor["id"], collection="c", maxTimeMS=50)["cursor"]
    assert more["nextBatch"] == [] and "postBatchResumeToken" in more
    assert more["postBatchResumeToken"]["_data"] >= first_token["_data"]
    db.c.insert_one({"_id": 1})
    # resuming from the empty batch's token skips nothing that happened after it
    with db.c.watch(resume_after=more["postBatchResumeToken"], max_await_time_ms=100) as s:
        assert _ids(take(s, 1)) == [1]
    full = db.command("getMore", cursor["id"], collection="c", maxTimeMS=50)["cursor"]
    assert len(full["nextBatch"]) == 1 and "postBatchResumeToken" in full
    db.command("killCursors", "c", cursors=[cursor["id"]])


def test_get_more_waits_for_a_write_instead_of_returning_empty(db: Db) -> None:
    db.create_collection("c")
    cursor = db.command("aggregate", "c", pipeline=[{"$changeStream": {}}],
                        cursor={})["cursor"]
    timer = threading.Timer(0.3, lambda: db.c.insert_one({"_id": 1}))
    timer.start()
    try:
        t0 = time.monotonic()
        more = db.command("getMore", cursor["id"], collection="c", maxTimeMS=10_000)["cursor"]
        elapsed = time.monotonic() - t0
    finally:
        timer.join()
    assert [e["documentKey"]["_id"] for e in more["nextBatch"]] == [1]
    assert 0.2 < elapsed < 5.0
    t0 = time.monotonic()
    idle = db.command("getMore", cursor["id"], collection="c", maxTimeMS=300)["cursor"]
    assert idle["nextBatch"] == [] and time.monotonic() - t0 >= 0.25
    db.command("killCursors", "c", cursors=[cursor["id"]])


@pytest.mark.sandbox_only
def test_resuming_before_the_oldest_oplog_entry_is_history_lost(dedicated_sandbox: Any) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(dedicated_sandbox(oplog_max_entries=5))
    try:
        coll = client.t.c
        with coll.watch(max_await_time_ms=100) as stream:
            coll.insert_one({"_id": 0})
            first = take(stream, 1)[0]
        coll.insert_many([{"_id": i} for i in range(1, 10)])
        for kwargs in ({"resume_after": first["_id"]},
                       {"start_at_operation_time": first["clusterTime"]}):
            with pytest.raises(OperationFailure) as info, coll.watch(**kwargs) as s:
                s.try_next()
            assert info.value.code == 286
        with coll.watch(max_await_time_ms=100) as fresh:
            coll.insert_one({"_id": 10})
            assert _ids(take(fresh, 1)) == [10]
    finally:
        client.close()


@pytest.mark.sandbox_only
def test_open_stream_that_falls_off_the_oplog_fails_with_286(dedicated_sandbox: Any) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(dedicated_sandbox(oplog_max_entries=3))
    try:
        db = client.t
        db.create_collection("c")
        cursor = db.command("aggregate", "c", pipeline=[{"$changeStream": {}}],
                            cursor={})["cursor"]
        db.c.insert_many([{"_id": i} for i in range(10)])
        with pytest.raises(OperationFailure) as info:
            db.command("getMore", cursor["id"], collection="c", maxTimeMS=50)
        assert info.value.code == 286
    finally:
        client.close()


def test_start_before_the_deployment_existed_is_history_lost(db: Db) -> None:
    with pytest.raises(OperationFailure) as info, db.c.watch(
            start_at_operation_time=Timestamp(1_000_000, 1)) as stream:
        stream.try_next()
    assert info.value.code == 286


@pytest.mark.sandbox_only
def test_cursor_is_gone_after_history_loss(dedicated_sandbox: Any) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(dedicated_sandbox(oplog_max_entries=2))
    try:
        db = client.t
        db.create_collection("c")
        cursor = db.command("aggregate", "c", pipeline=[{"$changeStream": {}}],
                            cursor={})["cursor"]
        db.c.insert_many([{"_id": i} for i in range(5)])
        codes = []
        for _ in range(2):
            with pytest.raises(OperationFailure) as info:
                db.command("getMore", cursor["id"], collection="c", maxTimeMS=50)
            codes.append(info.value.code)
        assert codes == [286, 43]
    finally:
        client.close()
