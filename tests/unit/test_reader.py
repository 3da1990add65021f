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
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp

from backfill.reader import cursor_batch, split_documents
from cdc import replies
from cdc.mapping.keys import id_bson_from_raw as id_document
from cdc.replies import read_cursor_reply
from cdc.types import ClusterTime

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


def test_cursor_batch_slices_each_document_and_the_cursor_id_out_of_a_reply() -> None:
    docs: list[dict[str, Any]] = [{"_id": 1, "a": {"b": [1, 2]}}, {"x": "y", "_id": "late"},
                                  {"_id": 3.5}]
    raw = [bson.encode(d) for d in docs]
    for key, cursor_id in (("firstBatch", 7), ("nextBatch", 0)):
        reply = bson.encode({
            "cursor": {"id": Int64(cursor_id), "ns": "db.c",
                       key: [RawBSONDocument(r) for r in raw],
                       "postBatchResumeToken": {"_data": "00"}},
            "ok": 1.0, "operationTime": Timestamp(5, 1)})
        assert cursor_batch(reply) == (cursor_id, raw)


def test_cursor_batch_of_an_empty_batch_has_no_documents() -> None:
    reply = bson.encode({"ok": 1.0, "cursor": {"nextBatch": [], "id": Int64(0), "ns": "d.c"}})
    assert cursor_batch(reply) == (0, [])


def test_cursor_reply_gives_ns_post_batch_token_and_operation_time_from_the_bytes() -> None:
    token = {"_data": "8263A1B2C3000000012B0229296E04"}
    events = [{"_id": {"_data": f"{n:02d}"}, "operationType": "delete"} for n in range(3)]
    reply = bson.encode({
        "cursor": {"id": Int64(42), "ns": "db.coll", "nextBatch": events,
                   "postBatchResumeToken": token},
        "ok": 1.0, "operationTime": Timestamp(1700000000, 7),
        "$clusterTime": {"clusterTime": Timestamp(1700000001, 1)}})
    cursor = read_cursor_reply(reply)
    assert cursor.cursor_id == 42
    assert cursor.ns == "db.coll"
    assert [bson.decode(d) for d in cursor.docs] == events
    assert cursor.post_batch_token is not None
    assert bson.decode(cursor.post_batch_token) == token
    assert cursor.operation_time == ClusterTime(1700000000, 7)
    bare = read_cursor_reply(bson.encode({"cursor": {"id": Int64(0), "firstBatch": []},
                                          "ok": 1.0}))
    assert bare == (0, None, [], None, None)
    with pytest.raises(ValueError, match="without a cursor"):
        read_cursor_reply(bson.encode({"ok": 1.0}))


def split_both(data: bytes, start: int, stop: int) -> tuple[object, object]:
    """``split_array`` in C and in Python, each a list or the type of its error."""
    assert replies.split_array is not replies._split_array, (
        "cdc._fastevents is not built (make venv)")
    verdicts: list[object] = []
    for split in (replies.split_array, replies._split_array):
        try:
            verdicts.append(split(data, start, stop))
        except Exception as exc:
            verdicts.append(type(exc))
    return verdicts[0], verdicts[1]


def test_c_and_python_array_splitters_agree_on_every_corrupted_byte_and_cut() -> None:
    docs = [bson.encode({"_id": n, "pad": "x" * n}) for n in range(4)]
    array = bson.encode({"a": [RawBSONDocument(d) for d in docs]})
    start, stop = 4 + 3 + 4, len(array) - 2  # after "a"'s type, name and size
    assert split_both(array, start, stop) == (docs, docs)
    fine = errors = 0
    for pos in range(start, stop):
        for value in (0x00, 0x01, 0x03, 0x05, 0x7F, 0xFF):
            data = array[:pos] + bytes([value]) + array[pos + 1:]
            fast, slow = split_both(data, start, stop)
            assert fast == slow, (pos, value)
            fine += isinstance(fast, list)
            errors += fast is ValueError
    ends = [start]  # where each element ends: the only cuts that leave whole ones
    for doc in docs:
        ends.append(ends[-1] + 1 + len(str(len(ends) - 1)) + 1 + len(doc))
    for cut in range(start, stop):
        whole = docs[:ends.index(cut)] if cut in ends else ValueError
        assert split_both(array, start, cut) == (whole, whole), cut
    assert split_both(array, start, len(array) + 1) == (ValueError, ValueError)
    assert fine and errors  # both verdicts occur among the corruptions
