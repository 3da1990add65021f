"""``$match`` after ``$changeStream`` on the event envelope (operationType, ns).

The sandbox evaluates envelope-only filters on the oplog entry without building the
event; any other filter goes through the general pipeline engine. Either way the
events must be the same bytes: each filter is run once as written and once with an
always-true clause on a non-envelope field added (which no shortcut can take), over
the same changes, and the two event lists compared byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.database import Database

Db = Database[dict[str, Any]]
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)


def _events(db: Db, start: Timestamp, match: dict[str, Any], full: str) -> list[bytes]:
    pipeline = [{"$changeStream": {"startAtOperationTime": start, "fullDocument": full}},
                {"$match": match}]
    reply: Any = db.command("aggregate", 1, pipeline=pipeline, cursor={},
                            codec_options=RAW)
    out = [bytes(e.raw) for e in reply["cursor"]["firstBatch"]]
    db.command("killCursors", "$cmd.aggregate", cursors=[reply["cursor"]["id"]])
    return out


def _changes(db: Db) -> Timestamp:
    db.create_collection("a")
    db.create_collection("b")
    start = db.command("ping")["operationTime"]
    for coll in (db.a, db.b):
        coll.insert_many([{"_id": i, "v": "x" * i} for i in range(4)])
        coll.update_one({"_id": 1}, {"$set": {"v": "changed"}, "$unset": {"w": 1}})
        coll.replace_one({"_id": 2}, {"whole": True})
        coll.delete_one({"_id": 3})
    db.a.update_one({"_id": 0}, {"$set": {"v": "later"}})
    db.a.delete_one({"_id": 0})   # the lookup for the update above now finds nothing
    db.c.insert_one({"_id": "c"})
    db.c.drop()
    assert isinstance(start, Timestamp)
    return start


FILTERS: list[dict[str, Any]] = [
    {"$or": [{"operationType": "invalidate"}, {"ns.db": "DB", "ns.coll": "a"},
             {"ns.db": "DB", "operationType": "dropDatabase"}]},
    {"operationType": {"$in": ["insert", "delete", "drop"]}},
    {"ns.coll": {"$ne": "a"}, "operationType": {"$nin": ["replace"]}},
    {"$nor": [{"ns.coll": "b"}], "ns.db": {"$eq": "DB", "$exists": True}},
    {"$and": [{"ns": {"db": "DB", "coll": "b"}}, {"operationType": "update"}]},
    {"ns.coll": {"$exists": False}},
]


@pytest.mark.parametrize("full", ["default", "updateLookup"])
@pytest.mark.parametrize("which", range(len(FILTERS)))
def test_envelope_filters_select_the_same_events_as_the_general_engine(
        db: Db, which: int, full: str) -> None:
    start = _changes(db)
    match = _bind(FILTERS[which], db.name)
    fast = _events(db, start, match, full)
    general = _events(db, start, {"$and": [match, {"_id": {"$exists": True}}]}, full)
    assert fast == general
    everything = _events(db, start, {"_id": {"$exists": True}}, full)
    assert set(fast) <= set(everything)
    if which == 0:   # the tailer's filter: every change of db.a, in order
        kinds = [RawBSONDocument(e)["operationType"] for e in fast]
        assert kinds == ["insert"] * 4 + ["update", "replace", "delete", "update", "delete"]


def _bind(value: Any, db_name: str) -> Any:
    if isinstance(value, dict):
        return {k: _bind(v, db_name) for k, v in value.items()}
    if isinstance(value, list):
        return [_bind(v, db_name) for v in value]
    return db_name if value == "DB" else value
