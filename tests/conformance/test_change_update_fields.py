"""``updateDescription`` names exactly the fields an update changed.

The sandbox compares the stored documents' top-level fields byte for byte and only
looks inside those that differ; fields of every BSON type that an update leaves alone
must never show up, whatever their size, while changed ones — top level, nested,
removed, or changed in type only — always do.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from bson.binary import Binary
from bson.code import Code
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo.database import Database

from tests.conformance.streams import take

Db = Database[dict[str, Any]]

EVERY_TYPE: dict[str, Any] = {
    "double": 1.5, "string": "s" * 300, "doc": {"x": [1, {"y": "z"}]}, "array": [1, "a"],
    "binary": Binary(b"\x00\x01" * 100, 0), "oid": ObjectId(), "bool": True,
    "date": datetime.datetime(2024, 1, 2, 3, 4, 5, 6000), "null": None,
    "regex": Regex("^a.b$", "i"), "int32": 7, "ts": Timestamp(5, 6), "int64": Int64(2**40),
    "decimal": Decimal128("1.25"), "min": MinKey(), "max": MaxKey(), "code": Code("x+1"),
    "pyregex": re.compile("x*"),
}


def test_update_description_lists_changed_fields_and_never_untouched_ones(db: Db) -> None:
    db.c.insert_one({"_id": 1, **EVERY_TYPE, "n": 1, "sub": {"a": 1, "b": [1, 2]},
                     "gone": "x"})
    with db.c.watch(max_await_time_ms=100) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"n": 2, "sub.b.1": 3}, "$unset": {"gone": ""}})
        db.c.update_one({"_id": 1}, {"$set": {"int32": Int64(7), "added": [1]}})
        db.c.update_one({"_id": 1}, {"$set": {"string": "t" * 300}, "$inc": {"n": 0}})
        first, second, third = take(stream, 3)
    assert first["updateDescription"] == {"updatedFields": {"n": 2, "sub.b.1": 3},
                                          "removedFields": ["gone"], "truncatedArrays": []}
    assert second["updateDescription"]["updatedFields"] == {"int32": 7, "added": [1]}
    assert second["updateDescription"]["removedFields"] == []
    assert third["updateDescription"]["updatedFields"] == {"string": "t" * 300}
    assert third["updateDescription"]["removedFields"] == []
