"""Documents in and out: writes, queries, cursors, aggregation and metadata."""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern

Db = Database[dict[str, Any]]


def test_duplicate_id_is_error_11000_and_ordered_insert_stops(db: Db) -> None:
    db.c.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"_id": 1})
    with pytest.raises(BulkWriteError) as info:
        db.c.insert_many([{"_id": 2}, {"_id": 1}, {"_id": 3}])
    errors = info.value.details["writeErrors"]
    assert [(e["index"], e["code"]) for e in errors] == [(1, 11000)]
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2]
    with pytest.raises(BulkWriteError):
        db.c.insert_many([{"_id": 4}, {"_id": 1}, {"_id": 5}], ordered=False)
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2, 4, 5]


def test_update_operators_upsert_and_counts(db: Db) -> None:
    db.c.insert_many([{"_id": i, "n": i, "tags": ["a"]} for i in range(5)])
    res = db.c.update_many({"n": {"$gte": 3}}, {"$inc": {"n": 10}, "$push": {"tags": "b"}})
    assert (res.matched_count, res.modified_count) == (2, 2)
    assert db.c.find_one({"_id": 4}) == {"_id": 4, "n": 14, "tags": ["a", "b"]}
    noop = db.c.update_one({"_id": 0}, {"$set": {"n": 0}})
    assert (noop.matched_count, noop.modified_count) == (1, 0)
    up = db.c.update_one({"_id": 9, "kind": "x"}, {"$set": {"v": 1}}, upsert=True)
    assert up.upserted_id == 9
    assert db.c.find_one({"_id": 9}) == {"_id": 9, "kind": "x", "v": 1}
    db.c.update_one({"_id": 1}, {"$unset": {"tags": ""}, "$rename": {"n": "m"}})
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "m": 1}


def test_update_with_array_filters_and_pipeline(db: Db) -> None:
    db.c.insert_one({"_id": 1, "grades": [{"g": 80, "ok": False}, {"g": 95, "ok": False}],
                     "a": 2, "b": 3})
    db.c.update_one({"_id": 1}, {"$set": {"grades.$[hi].ok": True}},
                    array_filters=[{"hi.g": {"$gte": 90}}])
    doc = db.c.find_one({"_id": 1})
    assert doc is not None and [g["ok"] for g in doc["grades"]] == [False, True]
    db.c.update_one({"_id": 1}, [{"$set": {"sum": {"$add": ["$a", "$b"]}}}])
    doc = db.c.find_one({"_id": 1})
    assert doc is not None and doc["sum"] == 5


def test_replace_cannot_change_id(db: Db) -> None:
    db.c.insert_one({"_id": 1, "x": 1})
    with pytest.raises(OperationFailure):
        db.c.replace_one({"_id": 1}, {"_id": 2, "x": 2})
    db.c.replace_one({"_id": 1}, {"y": 2})
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "y": 2}


def test_delete_and_find_and_modify(db: Db) -> None:
    db.c.insert_many([{"_id": i, "q": i % 2} for i in range(6)])
    assert db.c.delete_many({"q": 0}).deleted_count == 3
    assert db.c.delete_one({"q": 1}).deleted_count == 1
    before = db.c.find_one_and_update({"_id": 3}, {"$set": {"z": 1}})
    assert before == {"_id": 3, "q": 1}
    after = db.c.find_one_and_update({"_id": 3}, {"$set": {"z": 2}},
                                     return_document=ReturnDocument.AFTER)
    assert after == {"_id": 3, "q": 1, "z": 2}
    gone = db.c.find_one_and_delete({"_id": 5})
    assert gone == {"_id": 5, "q": 1}
    made = db.c.find_one_and_update({"_id": 7}, {"$set": {"k": 1}}, upsert=True,
                                    return_document=ReturnDocument.AFTER)
    assert made == {"_id": 7, "k": 1}
    assert sorted(d["_id"] for d in db.c.find()) == [3, 7]


def test_find_sort_projection_skip_limit_and_batches(db: Db) -> None:
    db.c.insert_many([{"_id": i, "k": i % 3, "v": f"v{i}"} for i in range(250)])
    docs = list(db.c.find({"k": 1}, {"v": 1, "_id": 0}).sort("v", DESCENDING).skip(2).limit(5))
    expected = sorted((f"v{i}" for i in range(250) if i % 3 == 1), reverse=True)[2:7]
    assert docs == [{"v": v} for v in expected]
    ids = [d["_id"] for d in db.c.find({}, batch_size=7).sort("_id", ASCENDING)]
    assert ids == list(range(250))
    assert db.c.count_documents({"k": 2}) == 83
    assert db.c.estimated_document_count() == 250
    assert sorted(db.c.distinct("k")) == [0, 1, 2]


def test_id_range_scan_with_hint_follows_bson_order(db: Db) -> None:
    oid = ObjectId()
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    ids: list[Any] = [MaxKey(), "b", "a", 3.5, Int64(2), 1, Decimal128("2.5"), None, MinKey(),
                      {"x": 1}, Binary(b"\x01\x02", 0), oid, False, True, when]
    db.c.insert_many([{"_id": i, "ix": n} for n, i in enumerate(ids)])
    ordered = [d["ix"] for d in db.c.find().sort("_id", 1).hint("_id_")]
    # MinKey, null, 1, 2, 2.5, 3.5, "a", "b", {x}, binary, ObjectId, false, true, date, MaxKey
    assert ordered == [8, 7, 5, 4, 6, 3, 2, 1, 9, 10, 11, 12, 13, 14, 0]
    window = db.c.find({"_id": {"$gte": 2, "$lt": 4}}).sort("_id", 1).hint("_id_")
    assert [d["_id"] for d in window] == [2, Decimal128("2.5"), 3.5]


def test_descending_id_with_limit_and_skip_follows_reverse_bson_order(db: Db) -> None:
    ids: list[Any] = ["b", 3.5, Int64(2), 1, None, True, ObjectId()]
    db.c.insert_many([{"_id": i, "ix": n} for n, i in enumerate(ids)])
    top = db.c.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
    assert top == {"_id": True}
    window = list(db.c.find({}, {"ix": 1, "_id": 0}).sort("_id", DESCENDING).skip(1).limit(3))
    assert window == [{"ix": 6}, {"ix": 0}, {"ix": 1}]  # ObjectId, "b", 3.5
    assert list(db.c.find().sort("_id", DESCENDING).skip(7).limit(2)) == []


def test_sample_then_project_draws_distinct_existing_documents(db: Db) -> None:
    db.c.insert_many([{"_id": i, "v": i * 2} for i in range(50)])
    drawn = list(db.c.aggregate([{"$sample": {"size": 10}}, {"$project": {"_id": 1}}]))
    assert len(drawn) == 10 and all(set(d) == {"_id"} for d in drawn)
    assert len({d["_id"] for d in drawn}) == 10 and {d["_id"] for d in drawn} <= set(range(50))
    everything = list(db.c.aggregate([{"$sample": {"size": 80}}]))
    assert sorted(d["_id"] for d in everything) == list(range(50))
    assert all(d["v"] == d["_id"] * 2 for d in everything)


def test_numbers_of_different_types_are_the_same_id(db: Db) -> None:
    db.c.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"_id": 1.0})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"_id": Int64(1)})


def test_raw_documents_come_back_byte_identical(db: Db) -> None:
    doc = {"_id": uuid.uuid4().hex, "i32": 1, "i64": Int64(1), "d": 1.0,
           "dec": Decimal128("1.10"), "bin": Binary(b"\x00", 4), "nested": {"a": [1, {"b": 2}]}}
    raw = RawBSONDocument(bson.encode(doc))
    db.c.insert_one(raw)
    options = CodecOptions(document_class=RawBSONDocument)
    raw_coll: Any = db.get_collection("c", codec_options=options)
    got = raw_coll.find_one({"_id": doc["_id"]})
    assert got is not None and got.raw == raw.raw


def test_aggregate_stages(db: Db) -> None:
    db.c.insert_many([{"_id": i, "g": i % 4, "v": i} for i in range(100)])
    groups = list(db.c.aggregate([{"$match": {"v": {"$lt": 40}}},
                                  {"$group": {"_id": "$g", "n": {"$sum": 1}}},
                                  {"$sort": {"_id": 1}}]))
    assert groups == [{"_id": g, "n": 10} for g in range(4)]
    assert list(db.c.aggregate([{"$count": "total"}])) == [{"total": 100}]
    sample = list(db.c.aggregate([{"$sample": {"size": 5}}]))
    assert len(sample) == 5 and len({d["_id"] for d in sample}) == 5
    buckets = list(db.c.aggregate([{"$bucketAuto": {"groupBy": "$_id", "buckets": 4}}]))
    assert sum(b["count"] for b in buckets) == 100 and len(buckets) == 4
    assert buckets[0]["_id"]["min"] == 0
    top = list(db.c.aggregate([{"$sort": {"v": -1}}, {"$skip": 1}, {"$limit": 2},
                               {"$project": {"_id": 0, "v": 1}}]))
    assert top == [{"v": 98}, {"v": 97}]
    stats = list(db.c.aggregate([{"$collStats": {"storageStats": {}, "count": {}}}]))
    assert stats[0]["count"] == 100
    assert stats[0]["storageStats"]["count"] == 100 and stats[0]["storageStats"]["size"] > 0


def test_collections_indexes_and_rename(db: Db, mongo_client: Any) -> None:
    db.create_collection("a")
    with pytest.raises(OperationFailure) as info:
        db.command("create", "a")
    assert info.value.code == 48
    db.a.create_index([("x", 1)], name="x_1", unique=True)
    names = {i["name"] for i in db.a.list_indexes()}
    assert names == {"_id_", "x_1"}
    db.a.drop_index("x_1")
    assert [i["name"] for i in db.a.list_indexes()] == ["_id_"]
    db.a.insert_one({"_id": 1})
    db.a.rename("b")
    assert db.list_collection_names() == ["b"]
    assert db.b.find_one() == {"_id": 1}
    db.b.drop()
    assert db.list_collection_names() == []
    with pytest.raises(OperationFailure) as missing:
        db.command("collMod", "nothing_here")
    assert missing.value.code == 26


def test_get_more_on_unknown_cursor_is_43(db: Db) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("getMore", 987654321, collection="c")
    assert info.value.code == 43


@pytest.mark.parametrize("ddl", ["rename", "drop"])
def test_rename_or_drop_kills_open_queries_on_the_collection_with_175(
        db: Db, ddl: str) -> None:
    """renameCollection and drop invalidate the collection's open cursors: the next
    getMore fails with QueryPlanKilled; cursors on other collections go on."""
    db.a.insert_many([{"_id": i} for i in range(10)])
    db.other.insert_many([{"_id": i} for i in range(10)])
    reading = db.a.find(batch_size=3)
    elsewhere = db.other.find(batch_size=3)
    assert [next(reading)["_id"] for _ in range(3)] == [0, 1, 2]
    assert [next(elsewhere)["_id"] for _ in range(3)] == [0, 1, 2]
    if ddl == "rename":
        db.a.rename("b")
    else:
        db.a.drop()
    with pytest.raises(OperationFailure) as info:
        next(reading)
    assert info.value.code == 175
    assert [d["_id"] for d in elsewhere] == list(range(3, 10))


def test_range_comparisons_are_type_bracketed(db: Db) -> None:
    db.c.insert_many([{"_id": i} for i in (1, 5, 7.5, "a", "z", MinKey(), MaxKey())])
    numbers = [d["_id"] for d in db.c.find({"_id": {"$gte": 5}}).sort("_id", 1)]
    assert numbers == [5, 7.5]
    strings = [d["_id"] for d in db.c.find({"_id": {"$lt": "q"}}).sort("_id", 1)]
    assert strings == ["a"]
    everything = list(db.c.find({"_id": {"$gt": MinKey(), "$lt": MaxKey()}}))
    assert len(everything) == 5
    # each bound only matches its own type class, so bounds of two types meet nowhere
    assert list(db.c.find({"_id": {"$gte": 1, "$lt": "z"}})) == []


def test_retried_retryable_write_is_applied_once(db: Db, mongo_client: Any) -> None:
    db.create_collection("c")
    with mongo_client.start_session() as session:
        command = {"insert": "c", "documents": [{"_id": 1}], "txnNumber": Int64(7)}
        first = db.command(command, session=session)
        again = db.command(command, session=session)
    assert first["n"] == again["n"] == 1 and "writeErrors" not in again
    assert db.c.count_documents({}) == 1


def test_aggregate_sort_and_bucket_auto_follow_bson_order_across_types(db: Db) -> None:
    oid = ObjectId()
    db.c.insert_many([{"_id": v} for v in ("s", 2, oid, 1.5, None)])
    ordered = [d["_id"] for d in db.c.aggregate([{"$sort": {"_id": 1}}])]
    assert ordered == [None, 1.5, 2, "s", oid]
    buckets = list(db.c.aggregate([{"$bucketAuto": {"groupBy": "$_id", "buckets": 5}}]))
    assert [b["_id"]["min"] for b in buckets] == [None, 1.5, 2, "s", oid]


def test_arithmetic_operators_keep_mongodb_numeric_types(db: Db) -> None:
    db.c.insert_one({"_id": 1, "i64": Int64(5), "i32": 2, "d": 1.5, "bits": 6, "big": 2**31 - 1,
                     "items": [{"v": 1}, {"v": 2}]})
    db.c.update_one({"_id": 1}, {"$inc": {"i64": 1, "i32": 1, "big": 1, "new": 4},
                                 "$mul": {"d": 2}, "$bit": {"bits": {"and": 3}}})
    db.c.update_one({"_id": 1}, {"$mul": {"i32": 10, "absent": 3}, "$set": {"items.$[].v": 0}})
    doc = db.c.find_one({"_id": 1})
    assert doc is not None
    assert doc["i64"] == 6 and type(doc["i64"]) is Int64
    assert doc["i32"] == 30 and type(doc["i32"]) is int
    assert doc["big"] == 2**31 and type(doc["big"]) is Int64
    assert (doc["d"], doc["bits"], doc["new"], doc["absent"]) == (3.0, 2, 4, 0)
    assert doc["items"] == [{"v": 0}, {"v": 0}]


def test_unacknowledged_writes_get_no_reply_but_are_applied(db: Db) -> None:
    fire_and_forget = db.get_collection("c", write_concern=WriteConcern(w=0))
    for i in range(20):
        fire_and_forget.insert_one({"_id": i})
    deadline = time.monotonic() + 10
    while db.c.count_documents({}) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert db.command("ping")["ok"] == 1.0


def test_find_with_batch_size_zero_opens_a_cursor_without_documents(db: Db) -> None:
    db.c.insert_many([{"_id": i} for i in range(5)])
    first = db.command("find", "c", batchSize=0)["cursor"]
    assert first["firstBatch"] == [] and first["id"] != 0
    more = db.command("getMore", first["id"], collection="c", batchSize=3)["cursor"]
    assert [d["_id"] for d in more["nextBatch"]] == [0, 1, 2]
    rest = db.command("getMore", first["id"], collection="c")["cursor"]
    assert [d["_id"] for d in rest["nextBatch"]] == [3, 4] and rest["id"] == 0
