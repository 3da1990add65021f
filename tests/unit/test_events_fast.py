"""decode_raw (envelope read from the bytes) agrees with decode_event or declines."""

from __future__ import annotations

import datetime
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from cdc import events
from cdc.events import Delete, Insert, Replace, TxnId, Update, decode_event, decode_raw
from cdc.types import ClusterTime


def envelope(op: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": {"_data": "8200000010000000022B"},
        "operationType": op,
        "clusterTime": Timestamp(1_700_000_000, 77),
        "wallTime": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "collectionUUID": Binary(b"u" * 16, 4),
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": ObjectId(b"k" * 12), "shard": 3},
    }
    doc.update(extra)
    return doc


BODY = {"_id": ObjectId(b"k" * 12), "n": 1.5, "d": Decimal128("1.1"), "a": [1, "x"],
        "t": Timestamp(1, 2), "z": None, "b": True, "i": Int64(9)}

AGREEING = [
    envelope("insert", fullDocument=BODY),
    envelope("update", fullDocument=BODY, updateDescription={"updatedFields": {"n": 2}}),
    envelope("update", fullDocument=None),
    envelope("update"),
    envelope("replace", fullDocument=BODY),
    envelope("delete"),
    envelope("insert", fullDocument=BODY, lsid={"id": Binary(b"s" * 16, 4)},
             txnNumber=Int64(12)),
    envelope("delete", lsid={"id": Binary(b"s" * 16, 4)}, txnNumber=5),
    envelope("update", fullDocument=BODY, lsid={"id": Binary(b"s" * 16, 4)}, txnNumber=None),
]


@pytest.mark.parametrize("doc", AGREEING)
def test_fast_envelope_decodes_data_events_exactly_like_the_general_path(
        doc: dict[str, Any]) -> None:
    data = bson.encode(doc)
    fast = decode_raw(data)
    assert fast is not None
    assert fast == decode_event(RawBSONDocument(data))
    assert isinstance(fast, Insert | Update | Replace | Delete)
    assert fast.cluster_time == ClusterTime(1_700_000_000, 77)
    if "fullDocument" in doc and doc["fullDocument"] is not None:
        assert not isinstance(fast, Delete)
        assert fast.full_document == bson.encode(BODY)


def test_fast_envelope_keeps_the_transaction_identity_of_int32_and_int64_numbers() -> None:
    lsid = {"id": Binary(b"s" * 16, 4)}
    a = decode_raw(bson.encode(envelope("delete", lsid=lsid, txnNumber=Int64(5))))
    b = decode_raw(bson.encode(envelope("delete", lsid=lsid, txnNumber=5)))
    assert a is not None and b is not None
    assert a.txn == b.txn == TxnId(bson.encode(lsid), 5)


@pytest.mark.parametrize("doc", [
    envelope("drop"),
    envelope("rename", to={"db": "shop", "coll": "o2"}),
    envelope("invalidate"),
    envelope("createIndexes"),
    envelope("insert", fullDocument=BODY, splitEvent={"fragment": 1, "of": 2}),
    envelope("insert", fullDocument="not a document"),
    envelope("insert", clusterTime=Int64(5)),
    envelope("delete", ns="shop.orders"),
    envelope("delete", txnNumber="five", lsid={"id": 1}),
    {"operationType": "delete", "clusterTime": Timestamp(1, 1),
     "ns": {"db": "a", "coll": "b"}, "documentKey": {"_id": 1}},
])
def test_fast_envelope_declines_what_the_general_path_must_judge(doc: dict[str, Any]) -> None:
    assert decode_raw(bson.encode(doc)) is None


@pytest.mark.parametrize("cut", [0, 3, 4, 10, 40, -1])
def test_fast_envelope_declines_truncated_or_corrupt_bytes(cut: int) -> None:
    data = bson.encode(envelope("delete"))
    assert decode_raw(data[:cut] if cut >= 0 else data[:-1] + b"\x01") is None
    assert decode_raw(b"\x05\x00\x00\x00\x00") is None


@pytest.fixture(params=["c", "python"])
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the C walker (cdc._fastevents) and with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(events, "_scan_c", None)
    else:
        assert events._scan_c is not None, "cdc._fastevents is not built (make venv)"
    return str(request.param)


@pytest.mark.parametrize("doc", AGREEING)
def test_both_walkers_decode_data_events_like_the_general_path(
        walker: str, doc: dict[str, Any]) -> None:
    data = bson.encode(doc)
    assert decode_raw(data) == decode_event(RawBSONDocument(data))


def verdict(data: bytes) -> object:
    try:
        return decode_raw(data)
    except Exception as exc:  # e.g. an ns without db/coll: both must raise the same
        return type(exc)


def test_c_and_python_walkers_agree_on_every_corrupted_byte_and_cut(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert events._scan_c is not None, "cdc._fastevents is not built (make venv)"
    samples = [bson.encode(d) for d in AGREEING]
    variants: list[bytes] = []
    for data in samples:
        variants.extend(data[:cut] for cut in range(len(data)))
        for pos in range(len(data)):
            for value in (0x00, 0x01, 0x03, 0x0A, 0x7F, 0xFF):
                variants.append(data[:pos] + bytes([value]) + data[pos + 1:])
    fast = [verdict(v) for v in variants]
    monkeypatch.setattr(events, "_scan_c", None)
    slow = [verdict(v) for v in variants]
    assert sum(v is not None for v in fast) > len(samples)  # not all declined
    assert fast == slow
