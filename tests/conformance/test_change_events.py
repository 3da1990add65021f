"""The documents change streams deliver, per operationType."""

from __future__ import annotations

from typing import Any

import pytest
from bson.int64 import Int64
from bson.objectid import ObjectId
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.conformance.streams import take

Db = Database[dict[str, Any]]
BASE = {"_id", "operationType", "clusterTime", "wallTime"}


def test_document_events_have_exactly_the_documented_fields(db: Db) -> None:
    db.create_collection("c")
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.insert_one({"_id": 1, "a": 1})
        db.c.update_one({"_id": 1}, {"$set": {"a": 2}})
        db.c.replace_one({"_id": 1}, {"b": 1})
        db.c.delete_one({"_id": 1})
        insert, update, replace, delete = take(stream, 4)
    assert set(insert) == BASE | {"fullDocument", "ns", "documentKey"}
    assert insert["fullDocument"] == {"_id": 1, "a": 1}
    assert insert["ns"] == {"db": db.name, "coll": "c"} and insert["documentKey"] == {"_id": 1}
    assert set(update) == BASE | {"ns", "documentKey", "updateDescription"}
    assert update["updateDescription"] == {"updatedFields": {"a": 2}, "removedFields": [],
                                           "truncatedArrays": []}
    assert set(replace) == BASE | {"fullDocument", "ns", "documentKey"}
    assert replace["operationType"] == "replace" and replace["fullDocument"] == {"_id": 1, "b": 1}
    assert set(delete) == BASE | {"ns", "documentKey"} and delete["operationType"] == "delete"
    times = [e["clusterTime"] for e in (insert, update, replace, delete)]
    assert times == sorted(times) and len(set(times)) == 4


def test_update_description_uses_dotted_paths_removals_and_truncations(db: Db) -> None:
    db.c.insert_one({"_id": 1, "a": {"b": 1, "c": 1}, "arr": [1, 2, 3, 4], "gone": 1,
                     "list": [{"x": 1}, {"x": 2}]})
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"a.b": 2, "list.1.x": 5, "new": True},
                                     "$unset": {"gone": "", "a.c": ""}})
        db.c.update_one({"_id": 1}, {"$push": {"arr": 9}})
        db.c.update_one({"_id": 1}, [{"$set": {"arr": {"$slice": ["$arr", 2]}}}])
        first, second, third = take(stream, 3)
    desc = first["updateDescription"]
    assert desc["updatedFields"] == {"a.b": 2, "list.1.x": 5, "new": True}
    assert sorted(desc["removedFields"]) == ["a.c", "gone"]
    assert second["updateDescription"]["updatedFields"] == {"arr.4": 9}
    assert third["updateDescription"]["truncatedArrays"] == [{"field": "arr", "newSize": 2}]


def test_document_key_keeps_original_bson_types(db: Db) -> None:
    oid = ObjectId()
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.insert_many([{"_id": Int64(5)}, {"_id": oid}, {"_id": "s"}])
        events = take(stream, 3)
    keys = [e["documentKey"]["_id"] for e in events]
    assert keys == [Int64(5), oid, "s"] and type(keys[0]) is Int64


def test_drop_is_followed_by_invalidate_which_closes_the_stream(db: Db) -> None:
    db.c.insert_one({"_id": 1})
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.drop()
        drop, invalidate = take(stream, 2)
        assert drop["operationType"] == "drop" and drop["ns"] == {"db": db.name, "coll": "c"}
        assert set(invalidate) == BASE and invalidate["operationType"] == "invalidate"
        assert stream.try_next() is None and not stream.alive


def test_rename_reports_target_then_invalidates(db: Db) -> None:
    db.c.insert_one({"_id": 1})
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.rename("d")
        rename, invalidate = take(stream, 2)
    assert rename["operationType"] == "rename"
    assert rename["to"] == {"db": db.name, "coll": "d"}
    assert invalidate["operationType"] == "invalidate"


def test_database_stream_sees_drop_database_then_invalidate(db: Db,
                                                            mongo_client: Any) -> None:
    db.a.insert_one({"_id": 1})
    with db.watch(max_await_time_ms=100) as stream:
        db.b.insert_one({"_id": 2})
        mongo_client.drop_database(db.name)
        events = take(stream, 5)
    ops = [e["operationType"] for e in events]
    assert ops[0] == "insert" and ops[-2:] == ["dropDatabase", "invalidate"]
    assert sorted(e["ns"]["coll"] for e in events if e["operationType"] == "drop") == ["a", "b"]
    assert events[-2]["ns"] == {"db": db.name}


def test_cluster_stream_spans_databases(mongo_client: MongoClient[dict[str, Any]],
                                        db: Db) -> None:
    other = mongo_client[db.name + "_2"]
    try:
        with mongo_client.watch([{"$match": {"ns.db": {"$in": [db.name, other.name]}}}],
                                max_await_time_ms=100) as stream:
            db.c.insert_one({"_id": 1})
            other.c.insert_one({"_id": 2})
            events = take(stream, 2)
        assert [(e["ns"]["db"], e["documentKey"]["_id"]) for e in events] == [
            (db.name, 1), (other.name, 2)]
    finally:
        mongo_client.drop_database(other.name)


def test_expanded_events_report_ddl(db: Db) -> None:
    with db.watch(max_await_time_ms=100, show_expanded_events=True) as stream:
        db.create_collection("c")
        db.c.create_index("x", name="x_1")
        db.c.drop_index("x_1")
        db.command("collMod", "c", changeStreamPreAndPostImages={"enabled": True})
        events = take(stream, 4)
    ops = [e["operationType"] for e in events]
    assert ops == ["create", "createIndexes", "dropIndexes", "modify"]
    assert events[1]["operationDescription"]["indexes"][0]["name"] == "x_1"
    assert events[2]["operationDescription"]["indexes"][0]["name"] == "x_1"
    assert all(e["ns"] == {"db": db.name, "coll": "c"} for e in events)


def test_ddl_events_are_hidden_without_expanded_events(db: Db) -> None:
    with db.watch(max_await_time_ms=100) as stream:
        db.create_collection("c")
        db.c.create_index("x")
        db.c.insert_one({"_id": 1})
        (event,) = take(stream, 1)
    assert event["operationType"] == "insert"


def test_pipeline_stages_filter_and_reshape_events(db: Db) -> None:
    pipeline: list[dict[str, Any]] = [
        {"$match": {"operationType": "insert", "fullDocument.keep": True}},
        {"$project": {"fullDocument": 1, "operationType": 1}},
        {"$addFields": {"tag": "x"}}]
    with db.c.watch(pipeline, max_await_time_ms=100) as stream:
        db.c.insert_many([{"_id": 1, "keep": False}, {"_id": 2, "keep": True}])
        db.c.delete_one({"_id": 2})
        db.c.insert_one({"_id": 3, "keep": True})
        events = take(stream, 2)
    assert [e["fullDocument"]["_id"] for e in events] == [2, 3]
    assert set(events[0]) == {"_id", "operationType", "fullDocument", "tag"}


def test_pipeline_that_changes_the_token_is_fatal(db: Db) -> None:
    with db.c.watch([{"$project": {"_id": 0}}], max_await_time_ms=100) as stream:
        db.c.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as info:
            take(stream, 1)
    assert info.value.code == 280


def test_expanded_events_carry_collection_uuid_and_disambiguated_paths(db: Db) -> None:
    db.c.insert_one({"_id": 1, "a": {"0": "x"}})
    uuid = next(db.list_collections(filter={"name": "c"}))["info"]["uuid"]
    with db.c.watch(max_await_time_ms=100, show_expanded_events=True) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"a.0": "y"}})
        (update,) = take(stream, 1)
    assert update["collectionUUID"] == uuid
    desc = update["updateDescription"]
    assert desc["updatedFields"] == {"a.0": "y"}
    assert desc["disambiguatedPaths"] == {"a.0": ["a", "0"]}
