"""Where a change-stream batch ends and what its ``postBatchResumeToken`` promises.

A batch cut short — by ``batchSize`` or by the 16 MiB reply limit — while the oplog
still holds unscanned entries must report the point the scan reached (the last event
returned), never a later high-water mark: resuming from any ``postBatchResumeToken``
(with ``resumeAfter`` or ``startAfter``) yields exactly the events after it. The
property test (30 seeded random cases) writes random changes to a watched and an
unwatched collection, reads them back in batches of random sizes, through a
collection stream or a database stream with the tailer's ``$match``, and resumes from
every token it was given.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.database import Database

Db = Database[dict[str, Any]]
Event = tuple[str, Any]


def _now(db: Db) -> Timestamp:
    ts = db.command("ping")["operationTime"]
    assert isinstance(ts, Timestamp)
    return ts


def _stream(db: Db, coll: str | None, spec: dict[str, Any],
            batch_size: int | None) -> dict[str, Any]:
    """``aggregate`` opening a stream on ``coll``, or on the database with the tailer's
    ``$match`` keeping only ``watched`` when ``coll`` is None."""
    pipeline: list[dict[str, Any]] = [{"$changeStream": spec}]
    if coll is None:
        pipeline.append({"$match": {"$or": [{"operationType": "invalidate"},
                                            {"ns.db": db.name, "ns.coll": "watched"}]}})
    cursor: dict[str, Any] = {} if batch_size is None else {"batchSize": batch_size}
    reply = db.command("aggregate", coll or 1, pipeline=pipeline, cursor=cursor)
    out: dict[str, Any] = reply["cursor"]
    return out


def _get_more(db: Db, cursor: dict[str, Any], batch_size: int | None,
              wait_ms: int = 1) -> dict[str, Any]:
    coll = str(cursor["ns"]).partition(".")[2]
    extra: dict[str, Any] = {} if batch_size is None else {"batchSize": batch_size}
    reply = db.command("getMore", Int64(cursor["id"]), collection=coll, maxTimeMS=wait_ms,
                       **extra)
    out: dict[str, Any] = reply["cursor"]
    return out


def _summary(events: list[dict[str, Any]]) -> list[Event]:
    return [(e["operationType"], e["documentKey"]["_id"]) for e in events]


def _drain(db: Db, coll: str | None, spec: dict[str, Any], want: int) -> list[Event]:
    """All events of a stream: ``want`` of them, then an empty batch."""
    cursor = _stream(db, coll, spec, None)
    events = _summary(cursor["firstBatch"])
    while len(events) < want:
        more = _get_more(db, cursor, None, wait_ms=500)
        assert more["nextBatch"], f"stream stalled after {len(events)} of {want} events"
        events += _summary(more["nextBatch"])
    assert _get_more(db, cursor, None)["nextBatch"] == []
    db.command("killCursors", str(cursor["ns"]).partition(".")[2], cursors=[cursor["id"]])
    return events


def test_batch_cut_by_batch_size_reports_its_last_event_and_resumes_after_it(db: Db) -> None:
    db.create_collection("c")
    start = _now(db)
    for i in range(10):
        db.c.insert_one({"_id": i})
        db.noise.insert_one({"_id": i})
    cursor = _stream(db, "c", {"startAtOperationTime": start}, 3)
    first = cursor["firstBatch"]
    assert [e["documentKey"]["_id"] for e in first] == [0, 1, 2]
    assert cursor["postBatchResumeToken"] == first[-1]["_id"]
    more = _get_more(db, cursor, 4)
    assert [e["documentKey"]["_id"] for e in more["nextBatch"]] == [3, 4, 5, 6]
    assert more["postBatchResumeToken"] == more["nextBatch"][-1]["_id"]
    for option in ("resumeAfter", "startAfter"):
        resumed = _drain(db, "c", {option: more["postBatchResumeToken"]}, 3)
        assert resumed == [("insert", 7), ("insert", 8), ("insert", 9)]
    db.command("killCursors", "c", cursors=[cursor["id"]])


def test_batch_cut_by_the_16_mib_reply_limit_resumes_at_the_first_event_left_out(
        db: Db) -> None:
    db.create_collection("big")
    start = _now(db)
    for i in range(6):
        db.big.insert_one({"_id": i, "blob": "x" * (4 * 1024 * 1024)})
        db.noise.insert_one({"_id": i})
    cursor = _stream(db, "big", {"startAtOperationTime": start}, None)
    first = cursor["firstBatch"]
    assert 0 < len(first) < 6
    assert cursor["postBatchResumeToken"] == first[-1]["_id"]
    rest = _drain(db, "big", {"resumeAfter": cursor["postBatchResumeToken"]}, 6 - len(first))
    assert rest == [("insert", i) for i in range(len(first), 6)]
    db.command("killCursors", "big", cursors=[cursor["id"]])


def _apply(db: Db, writes: list[tuple[bool, int, int]]) -> list[Event]:
    """Apply random writes; the events a stream on ``watched`` must report, in order."""
    live: dict[bool, list[int]] = {True: [], False: []}
    expected: list[Event] = []
    next_id = 0
    for step, (watched, kind, pick) in enumerate(writes):
        coll = db.watched if watched else db.unwatched
        ids = live[watched]
        if kind == 0 or not ids:
            next_id += 1
            coll.insert_one({"_id": next_id, "v": step})
            ids.append(next_id)
            event: Event = ("insert", next_id)
        elif kind == 1:
            doc_id = ids[pick % len(ids)]
            coll.update_one({"_id": doc_id}, {"$set": {"v": step}})
            event = ("update", doc_id)
        else:
            doc_id = ids.pop(pick % len(ids))
            coll.delete_one({"_id": doc_id})
            event = ("delete", doc_id)
        if watched:
            expected.append(event)
    return expected


@pytest.mark.parametrize("seed", range(30))
def test_resuming_from_every_post_batch_token_yields_exactly_the_events_after_it(
        db: Db, seed: int) -> None:
    rng = random.Random(seed)
    writes = [(rng.random() < 0.5, rng.randrange(3), rng.randrange(1000))
              for _ in range(rng.randint(5, 40))]
    sizes = [rng.randint(1, 6) for _ in range(rng.randint(1, 8))]
    whole_db = seed % 2 == 0
    db.create_collection("watched")
    db.create_collection("unwatched")
    start = _now(db)
    expected = _apply(db, writes)
    coll = None if whole_db else "watched"
    cursor = _stream(db, coll, {"startAtOperationTime": start}, sizes[0])
    got = _summary(cursor["firstBatch"])
    tokens = [(len(got), cursor["postBatchResumeToken"])]
    turn = 1
    while len(got) < len(expected):
        more = _get_more(db, cursor, sizes[turn % len(sizes)])
        turn += 1
        got += _summary(more["nextBatch"])
        tokens.append((len(got), more["postBatchResumeToken"]))
    assert got == expected
    db.command("killCursors", str(cursor["ns"]).partition(".")[2], cursors=[cursor["id"]])
    for n, (seen, token) in enumerate(tokens):
        option = "resumeAfter" if n % 2 else "startAfter"
        rest = _drain(db, coll, {option: token}, len(expected) - seen)
        assert rest == expected[seen:], (option, seen)


def test_batch_cut_between_a_drop_and_its_invalidate_resumes_with_the_invalidate(
        db: Db) -> None:
    db.create_collection("c")
    start = _now(db)
    db.c.insert_one({"_id": 1})
    db.c.drop()
    db.c.insert_one({"_id": 2})
    cursor = _stream(db, "c", {"startAtOperationTime": start}, 1)
    assert _summary(cursor["firstBatch"]) == [("insert", 1)]
    more = _get_more(db, cursor, 1)
    (drop,) = more["nextBatch"]
    assert drop["operationType"] == "drop" and more["postBatchResumeToken"] == drop["_id"]
    resumed = _stream(db, "c", {"resumeAfter": drop["_id"]}, None)
    assert [e["operationType"] for e in resumed["firstBatch"]] == ["invalidate"]
    assert resumed["id"] == 0
    rest = _get_more(db, cursor, 1)
    assert [e["_id"] for e in rest["nextBatch"]] == [resumed["firstBatch"][0]["_id"]]
    assert rest["id"] == 0


@pytest.mark.sandbox_only  # a real server batches only from 6.1, by its own parameters
def test_a_multi_delete_is_logged_in_batches_whose_events_share_a_cluster_time(
        db: Db) -> None:
    """MongoDB 6.1+ writes a large ``deleteMany`` as batches of up to 10 deletes, one
    oplog entry each (SERVER-63044, SERVER-64972, SERVER-76177): the events of one batch
    share a cluster time and carry no ``lsid``; a batch of one is a plain delete."""
    db.c.insert_many([{"_id": i} for i in range(25)])
    start = _now(db)
    db.c.delete_many({"_id": {"$gte": 4}})  # 21 documents: 10 + 10 + 1
    cursor = _stream(db, "c", {"startAtOperationTime": start}, None)
    events = [e for e in cursor["firstBatch"] if e["operationType"] == "delete"]
    assert [e["documentKey"]["_id"] for e in events] == list(range(4, 25))
    times = [e["clusterTime"] for e in events]
    assert times[:10] == [times[0]] * 10
    assert times[10:20] == [times[10]] * 10
    assert times[0] < times[10] < times[20]
    assert len({e["_id"]["_data"] for e in events}) == 21
    assert not any("lsid" in e or "txnNumber" in e for e in events)
    db.command("killCursors", "c", cursors=[cursor["id"]])
