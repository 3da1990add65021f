"""Raw batches: documents split without decoding, ``_id`` sliced with its BSON type."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from backfill.reader import id_document, split_documents

IDS: list[Any] = [
    1, Int64(2), 2.5, Decimal128("3.14"), "text", "", "é✓", ObjectId(), True, None,
    datetime.datetime(2024, 1, 1), Timestamp(5, 6), Binary(uuid.uuid4().bytes, 4),
    Regex("^a", "i"), {"a": 1, "b": [1, 2]}, MinKey(), MaxKey(),
]


@pytest.mark.parametrize("value", IDS, ids=lambda v: type(v).__name__)
def test_id_document_keeps_the_original_bson_type(value: Any) -> None:
    raw = bson.encode({"_id": value, "x": {"y": [1, 2, 3]}, "z": "w"})
    assert id_document(raw) == bson.encode({"_id": value})


def test_id_document_finds_an_id_that_is_not_first() -> None:
    raw = bson.encode({"a": 1, "_id": "late"})
    assert id_document(raw) == bson.encode({"_id": "late"})


def test_split_documents_returns_each_document_of_a_batch() -> None:
    docs = [bson.encode({"_id": i, "pad": "x" * i}) for i in range(50)]
    assert split_documents(b"".join(docs)) == docs
    assert split_documents(b"") == []
