"""Chunk planning: split points along BSON order, and chunks covering every _id once."""

from __future__ import annotations

import datetime
from typing import Any

import mongomock
from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.bsonorder import Bracket, bracket, range_filter, sort_key
from backfill.config import BackfillConfig
from backfill.planner import SizeEstimate, chunk_count, chunks_from_splits, split_points
from cdc.types import Namespace

NS = Namespace("db", "c")

MIXED: list[Any] = [
    None, -5, 1, Int64(2), 2.5, 3, 10**12, "", "a", "b", "é", "zz", {"k": 1}, {"k": 2},
    Binary(b"\x01" * 16, 4), ObjectId("000000000000000000000001"),
    ObjectId("ffffffffffffffffffffffff"), datetime.datetime(2020, 1, 1),
    datetime.datetime(2024, 5, 1),
]


def _chunk_members(ids: list[Any], points: list[Any]) -> list[list[Any]]:
    """Evaluate each chunk's filter with mongomock's query engine over ``ids``."""
    coll: Any = mongomock.MongoClient().db.c
    coll.insert_many([{"_id": v} for v in ids])
    lowest = min((bracket(v) for v in ids), default=Bracket.MINKEY)
    highest = max((bracket(v) for v in ids), default=Bracket.MAXKEY)
    members = []
    for chunk in chunks_from_splits(NS, points):
        f = range_filter(chunk.lower, chunk.upper, lowest=lowest, highest=highest)
        members.append([d["_id"] for d in coll.find(f)])
    return members


def test_every_mixed_type_id_falls_in_exactly_one_chunk() -> None:
    points = split_points(MIXED, 6)
    members = _chunk_members(MIXED, points)
    flat = [repr(v) for chunk in members for v in chunk]
    assert sorted(flat) == sorted(repr(v) for v in MIXED)
    assert len(members) == len(points) + 1 and len(members) > 3


def test_split_points_are_strictly_increasing_and_skip_unsplittable_types() -> None:
    points = split_points([*MIXED, 1.0, 3, "a"], 50)
    keys = [sort_key(p) for p in points]
    assert keys == sorted(set(keys))
    assert not any(isinstance(p, dict | Binary) or p is None for p in points)


def test_chunks_cross_type_brackets_in_bson_order() -> None:
    members = _chunk_members(MIXED, ["b"])
    low, high = members
    assert None in low and 2.5 in low and "a" in low and "b" not in low
    assert "b" in high and {"k": 1} in high and ObjectId("000000000000000000000001") in high


def test_one_chunk_for_small_or_empty_collections() -> None:
    cfg = BackfillConfig(chunk_documents=1000)
    assert chunk_count(SizeEstimate(0, 0.0), cfg) == 1
    assert chunk_count(SizeEstimate(999, 100.0), cfg) == 1
    assert chunk_count(SizeEstimate(10_000, 100.0), cfg) == 10
    # Large documents: the byte target wins.
    assert chunk_count(SizeEstimate(10_000, 1_000_000.0),
                       BackfillConfig(chunk_documents=1000, chunk_bytes=100_000_000)) == 100
    assert chunks_from_splits(NS, [])[0].lower is None
    # A collection smaller than one chunk is still cut for the workers.
    assert chunk_count(SizeEstimate(50_000, 100.0),
                       BackfillConfig(workers=4, chunk_documents=100_000, batch_size=1000)) == 32
    # ... but never below one batch per chunk.
    assert chunk_count(SizeEstimate(50_000, 100.0),
                       BackfillConfig(workers=4, chunk_documents=100_000, batch_size=5000)) == 10


ids = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=4),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.datetimes(min_value=datetime.datetime(1990, 1, 1),
                 max_value=datetime.datetime(2090, 1, 1)).map(
        lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(ids, min_size=1, max_size=30), st.lists(ids, max_size=15),
       st.integers(1, 8))
def test_any_split_partitions_any_ids(values: list[Any], samples: list[Any],
                                      chunks: int) -> None:
    unique: dict[Any, Any] = {}
    for v in values:
        unique.setdefault(sort_key(v), v)
    docs = list(unique.values())
    members = _chunk_members(docs, split_points(samples, chunks))
    assert sum(len(m) for m in members) == len(docs)
