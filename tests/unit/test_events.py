from __future__ import annotations

from typing import Any

import bson
import msgspec
import pytest
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from cdc.events import (
    ChangeEvent,
    Delete,
    DropDatabase,
    EventDecodeError,
    FragmentAssembler,
    Insert,
    Invalidate,
    Rename,
    TxnId,
    Unknown,
    Update,
    decode_event,
    id_document,
    token_cluster_time,
)
from cdc.types import ClusterTime, Namespace


def raw(doc: dict[str, Any]) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


def event(op: str, **extra: Any) -> RawBSONDocument:
    doc: dict[str, Any] = {
        "_id": {"_data": "82" + "00000010" + "00000002" + "ab"},
        "operationType": op,
        "clusterTime": Timestamp(16, 2),
        "ns": {"db": "shop", "coll": "orders"},
    }
    doc.update(extra)
    return raw(doc)


def test_insert_keeps_the_document_body_as_the_exact_raw_bson() -> None:
    body = bson.encode({"_id": Int64(7), "a": {"b": [1, 2.5, "x"]}})
    ev = decode_event(event("insert", documentKey={"_id": Int64(7)},
                            fullDocument=RawBSONDocument(body)))
    assert isinstance(ev, Insert)
    assert ev.full_document == body
    assert ev.ns == Namespace("shop", "orders")
    assert ev.cluster_time == ClusterTime(16, 2)
    assert ev.txn is None
    assert bson.decode(ev.token) == {"_data": "820000001000000002ab"}


def test_update_without_lookup_has_no_document_and_carries_the_transaction() -> None:
    ev = decode_event(event("update", documentKey={"_id": 1}, lsid={"id": b"s"},
                            txnNumber=Int64(5),
                            updateDescription={"updatedFields": {"a": 1}}))
    assert isinstance(ev, Update)
    assert ev.full_document is None
    assert ev.txn == TxnId(bson.encode({"id": b"s"}), 5)


def test_delete_rename_drop_database_and_invalidate_decode_to_their_types() -> None:
    assert isinstance(decode_event(event("delete", documentKey={"_id": 1})), Delete)
    ren = decode_event(event("rename", to={"db": "shop", "coll": "orders2"}))
    assert isinstance(ren, Rename) and ren.to == Namespace("shop", "orders2")
    dropdb = decode_event(event("dropDatabase", ns={"db": "shop"}))
    assert isinstance(dropdb, DropDatabase) and dropdb.db == "shop"
    assert isinstance(decode_event(event("invalidate", ns=None)), Invalidate)


def test_unknown_operation_type_is_kept_with_its_token_not_rejected() -> None:
    ev = decode_event(event("createIndexes", operationDescription={"indexes": []}))
    assert isinstance(ev, Unknown)
    assert ev.operation_type == "createIndexes"
    assert ev.cluster_time == ClusterTime(16, 2)


def test_event_missing_its_cluster_time_is_a_data_error() -> None:
    doc = {"_id": {"_data": "00"}, "operationType": "insert", "ns": {"db": "a", "coll": "b"}}
    with pytest.raises(EventDecodeError):
        decode_event(raw(doc))


def test_events_form_a_msgspec_tagged_union() -> None:
    ev = decode_event(event("delete", documentKey={"_id": 1}))
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(ev), type=ChangeEvent)
    assert back == ev


@pytest.mark.parametrize("value", [Int64(5), 5, 5.0, "5", bson.ObjectId()])
def test_id_document_keeps_the_bson_type_of_the_id(value: Any) -> None:
    key = bson.encode({"_id": value, "shard": 3})
    decoded = bson.decode(id_document(key))
    assert list(decoded) == ["_id"]
    assert type(decoded["_id"]) is type(value)
    assert decoded["_id"] == value


def test_token_cluster_time_reads_a_keystring_timestamp_and_declines_other_shapes() -> None:
    token = bson.encode({"_data": "8265A1B2C3000000072B0229"})
    assert token_cluster_time(token) == ClusterTime(0x65A1B2C3, 7)
    assert token_cluster_time(bson.encode({"_data": "0102"})) is None
    assert token_cluster_time(bson.encode({"x": 1})) is None


def test_fragments_are_joined_into_one_event_with_the_last_fragments_token() -> None:
    asm = FragmentAssembler()
    whole = event("insert", documentKey={"_id": 1})
    assert asm.feed(whole) is whole
    big = bson.encode({"_id": 1, "pad": "x" * 100})
    first = raw({"_id": {"_data": "t1"}, "operationType": "insert",
                 "clusterTime": Timestamp(16, 2), "ns": {"db": "shop", "coll": "orders"},
                 "documentKey": {"_id": 1}, "splitEvent": {"fragment": 1, "of": 2}})
    second = raw({"_id": {"_data": "t2"}, "fullDocument": RawBSONDocument(big),
                  "splitEvent": {"fragment": 2, "of": 2}})
    assert asm.feed(first) is None
    assert asm.pending
    joined = asm.feed(second)
    assert joined is not None and not asm.pending
    ev = decode_event(joined)
    assert isinstance(ev, Insert)
    assert ev.full_document == big
    assert bson.decode(ev.token) == {"_data": "t2"}
    assert "splitEvent" not in joined


def test_a_fragment_sequence_that_breaks_off_is_discarded() -> None:
    asm = FragmentAssembler()
    orphan = raw({"_id": {"_data": "t2"}, "splitEvent": {"fragment": 2, "of": 2}})
    assert asm.feed(orphan) is None
    assert not asm.pending
