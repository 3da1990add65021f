"""MongoDB's own _id order (find sorted by _id) is the order of the mapping's _key.

Backfill chunks and verify ranges rely on it: a range of _id read from MongoDB must be
the same range of _key in PostgreSQL. Runs against the sandbox, or a real replica set
when MONGO2PG_TEST_MONGO_URI is set.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient

from cdc.mapping import MappingConfig, resolve
from cdc.mapping.keys import encode_key_value, id_bson_from_raw


def _ids(rng: random.Random) -> list[Any]:
    ids: list[Any] = [
        MinKey(), MaxKey(), None, True, False, 0, -1, 1.5, Int64(2**62), -(2**31),
        float("nan"), float("inf"), float("-inf"), 2.0**63, 5e-324, Decimal128("0.1"),
        Decimal128("-1E+400"), Decimal128("12345678901234567890.5"), "", "a", "a\x00",
        "ab", "é", "Z", "\U0001f600", {"a": 1}, {"a": 1, "b": 2}, {"a": "x"}, {"b": 0},
        {}, {"a": {"b": None}}, Binary(b"\x00", 0), Binary(b"\x00", 4), Binary(b"", 0),
        Binary(b"\x01\x02", 0), ObjectId("000000000000000000000000"),
        ObjectId("ffffffffffffffffffffffff"), DatetimeMS(-(2**40)), DatetimeMS(0),
        DatetimeMS(2**40), Timestamp(0, 1), Timestamp(2**32 - 1, 0),
    ]
    for _ in range(150):
        kind = rng.randrange(6)
        if kind == 0:
            ids.append(rng.randint(-(2**31), 2**31 - 1))
        elif kind == 1:
            ids.append(Int64(rng.randint(-(2**63), 2**63 - 1)))
        elif kind == 2:
            ids.append(rng.uniform(-1e12, 1e12))
        elif kind == 3:
            ids.append("".join(rng.choice("aAzZ09é_") for _ in range(rng.randrange(5))))
        elif kind == 4:
            ids.append(ObjectId(bytes(rng.randrange(256) for _ in range(12))))
        else:
            ids.append(Binary(uuid.UUID(int=rng.getrandbits(128)).bytes, 4))
    # MongoDB's unique _id index treats equal numbers as one key: keep one of each.
    by_key = {encode_key_value(v): v for v in ids}
    return list(by_key.values())


def test_mongodb_id_sort_order_equals_key_order(mongo_client: MongoClient[Any]) -> None:
    coll = mongo_client.get_database("m2p_mapping_order").get_collection(
        "ids", codec_options=CodecOptions(document_class=RawBSONDocument))
    coll.drop()
    ids = _ids(random.Random(7))
    coll.insert_many([{"_id": v, "n": i} for i, v in enumerate(ids)], ordered=False)
    mapper = resolve(MappingConfig(), "m2p_mapping_order.ids")
    sorted_raw = [doc.raw for doc in coll.find({}, sort=[("_id", 1)])]
    keys = [mapper.map_key(id_bson_from_raw(raw)) for raw in sorted_raw]
    assert len(keys) == len(ids)
    assert keys == sorted(keys)
    coll.drop()
