"""The _key encoding sorts like MongoDB sorts _id values, and identifies them exactly."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import MappingError
from cdc.mapping.keys import encode_key_value, id_bson_from_raw
from tests.unit.bson_strategies import PROPERTY, compare, id_values, numbers, values


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _bytes_cmp(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)


@settings(PROPERTY, max_examples=300)
@given(numbers, numbers)
def test_number_keys_sort_by_value_across_int32_int64_double_decimal(a: Any, b: Any) -> None:
    assert _bytes_cmp(encode_key_value(a), encode_key_value(b)) == compare(a, b)


@settings(PROPERTY, max_examples=300)
@given(id_values, id_values)
def test_key_order_equals_mongodb_id_order(a: Any, b: Any) -> None:
    assert _bytes_cmp(encode_key_value(a), encode_key_value(b)) == compare(a, b)


@settings(PROPERTY, max_examples=300)
@given(st.lists(values, min_size=1, max_size=3), st.lists(values, min_size=1, max_size=3))
def test_key_order_holds_inside_arrays_of_any_type(a: list[Any], b: list[Any]) -> None:
    assert _bytes_cmp(encode_key_value(a), encode_key_value(b)) == compare(a, b)


@pytest.mark.parametrize(
    "same",
    [
        [1, 1.0, Int64(1), Decimal128("1"), Decimal128("1.000")],
        [0, -0.0, 0.0, Int64(0), Decimal128("-0"), Decimal128("0E+10")],
        [float("nan"), Decimal128("NaN"), Decimal128("-NaN")],
        [float("inf"), Decimal128("Infinity")],
        [2**53, float(2**53), Int64(2**53), Decimal128("9007199254740992")],
    ],
)
def test_values_mongodb_holds_equal_share_one_key(same: list[Any]) -> None:
    assert len({encode_key_value(v) for v in same}) == 1


def test_edge_numbers_sort_nan_first_then_negative_infinity() -> None:
    ordered: list[Any] = [MinKey(), None, float("nan"), float("-inf"), Decimal128("-1E+6144"),
               -1.7976931348623157e308, Int64(-(2**63)), -1, -5e-324, 0, 5e-324,
               Decimal128("0.1"), 0.1, 1, 2**31 - 1, Int64(2**63 - 1), 2.0**63,
               Decimal128("9.999999999999999999999999999999999E+6144"), float("inf"), "",
               "\x00", "a", {}, [], Binary(b"", 0), ObjectId("0" * 24), False, True,
               DatetimeMS(-(2**63)), DatetimeMS(0), Timestamp(0, 0), MaxKey()]
    keys = [encode_key_value(v) for v in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_binary_of_equal_length_sorts_by_subtype_before_bytes() -> None:
    ordered = [Binary(b"z", 0), Binary(b"\x00", 4), Binary(b"\x00\x00", 0)]
    assert [encode_key_value(v) for v in ordered] == sorted(encode_key_value(v) for v in ordered)
    assert encode_key_value(Binary(b"a", 0)) == encode_key_value(b"a")


def test_minkey_and_maxkey_bound_every_key() -> None:
    low, high = encode_key_value(MinKey()), encode_key_value(MaxKey())
    for value in [None, float("nan"), "zzz", ObjectId(), True, Timestamp(2**32 - 1, 1)]:
        assert low < encode_key_value(value) < high


def test_object_id_key_is_type_byte_and_its_twelve_bytes() -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    assert encode_key_value(oid) == b"\x23" + oid.binary


@settings(PROPERTY, max_examples=300)
@given(id_values, st.dictionaries(st.sampled_from(["a", "b", "zz"]), values, max_size=3),
       st.booleans())
def test_id_bson_is_cut_byte_exact_from_the_raw_document(
    id_value: Any, rest: dict[str, Any], id_last: bool
) -> None:
    doc = {**rest, "_id": id_value} if id_last else {"_id": id_value, **rest}
    raw = bson.encode(doc)
    assert id_bson_from_raw(raw) == bson.encode({"_id": id_value})


def test_id_bson_of_document_without_id_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        id_bson_from_raw(bson.encode({"a": 1}))
