"""Document mode: key columns + the document as Extended JSON, and the way back."""

from __future__ import annotations

import math
from typing import Any

import bson
import msgspec
import pytest
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from hypothesis import given, settings

from cdc.errors import MappingError
from cdc.mapping import MappingConfig, MappingRule, resolve
from cdc.mapping.document import DocumentMapper, decode_id, id_key, render_id
from cdc.mapping.ejson import (
    DECODE_OPTIONS,
    _has_positive_exponent,
    needs_walker,
    relaxed_json,
    to_ejson,
)
from cdc.mapping.keys import encode_key_value
from tests.unit.bson_strategies import PROPERTY, documents, id_values, object_ids

CANONICAL = MappingConfig(json="canonical")


RELAXED = MappingConfig()


def _mapper(config: MappingConfig = RELAXED) -> DocumentMapper:
    mapper = resolve(config, "shop.orders")
    assert isinstance(mapper, DocumentMapper)
    return mapper


def test_default_rule_maps_namespace_to_db_schema_and_coll_table() -> None:
    (shape,) = _mapper().tables()
    assert (shape.schema, shape.name) == ("shop", "orders")
    assert [(c.name, c.pg_type) for c in shape.columns] == [
        ("_key", "bytea"), ("_id", "text"), ("_id_bson", "bytea"), ("doc", "jsonb")]
    assert shape.key_columns == ("_key",)


def test_row_holds_key_readable_id_exact_id_and_document() -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    raw = bson.encode({"_id": oid, "name": "Ann", "n": Int64(7)})
    mapped = _mapper().map_document(raw)
    ((key, id_text, id_bson, doc),) = mapped.rows["orders"]
    assert key == mapped.key == encode_key_value(oid)
    assert id_text == "65a1b2c3d4e5f60718293a4b"
    assert id_bson == bson.encode({"_id": oid})
    assert msgspec.json.decode(doc) == {
        "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "name": "Ann", "n": 7}


def test_map_key_of_document_key_equals_key_of_mapped_document() -> None:
    raw = bson.encode({"_id": Int64(5), "x": 1})
    mapper = _mapper()
    assert mapper.map_key(bson.encode({"_id": Int64(5)})) == mapper.map_document(raw).key
    assert mapper.map_key(bson.encode({"_id": 5.0})) == mapper.map_document(raw).key


@settings(PROPERTY, max_examples=250)
@given(documents())
def test_relaxed_fast_path_writes_what_the_exact_walker_writes(doc: dict[str, Any]) -> None:
    raw = bson.encode(doc)
    decoded = bson.decode(raw, DECODE_OPTIONS)
    try:
        expected = to_ejson(decoded, canonical=False)
    except MappingError:
        with pytest.raises(MappingError):
            relaxed_json(decoded, raw)
        return
    assert msgspec.json.decode(relaxed_json(decoded, raw)) == expected


@settings(PROPERTY, max_examples=250)
@given(documents())
def test_canonical_document_round_trips_to_identical_bson(doc: dict[str, Any]) -> None:
    raw = bson.encode(doc)
    mapper = _mapper(CANONICAL)
    try:
        mapped = mapper.map_document(raw)
    except MappingError:
        return  # only for U+0000 and wrapper-shaped keys: checked below
    # Extended JSON has one NaN: the sign and payload bits of a NaN double are not kept.
    # _id is exact to the bit (from _id_bson).
    original = bson.decode(raw, DECODE_OPTIONS)
    expected = bson.encode({**_one_nan(original), "_id": original["_id"]})
    assert bson.encode(mapper.to_document(mapped.rows)) == expected


def _one_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _one_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_one_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return float("nan")
    return value


def _relaxed_view(value: Any) -> Any:
    """What relaxed mode keeps, as canonical Extended JSON: an int64 that fits in int32
    comes back as int32; everything else keeps type and value."""
    def narrow(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"$numberLong"} and -(2**31) <= int(v["$numberLong"]) < 2**31:
                return {"$numberInt": v["$numberLong"]}
            return {k: narrow(x) for k, x in v.items()}
        if isinstance(v, list):
            return [narrow(x) for x in v]
        return v

    return narrow(to_ejson(_one_nan(value), canonical=True))


@settings(PROPERTY, max_examples=250)
@given(documents())
def test_relaxed_document_round_trips_except_int64_width(doc: dict[str, Any]) -> None:
    raw = bson.encode(doc)
    mapper = _mapper()
    try:
        mapped = mapper.map_document(raw)
    except MappingError:
        return
    back = mapper.to_document(mapped.rows)
    original = bson.decode(raw, DECODE_OPTIONS)
    assert _relaxed_view(back) == _relaxed_view(original)
    # _id comes back exactly, int64 included (from _id_bson).
    assert to_ejson(back["_id"], True) == to_ejson(_one_nan(original["_id"]), True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -0.0])
def test_non_finite_and_negative_zero_doubles_keep_their_value(value: float) -> None:
    raw = bson.encode({"_id": 1, "x": value, "nested": {"y": [value]}})
    mapper = _mapper()
    back = mapper.to_document(mapper.map_document(raw).rows)
    for got in (back["x"], back["nested"]["y"][0]):
        assert type(got) is float
        assert repr(got) == repr(value)


def test_doubles_written_in_exponent_form_are_wrapped_to_stay_doubles() -> None:
    raw = bson.encode({"_id": 1, "a": 1e16, "b": [-2.5e300], "c": 1e15, "s": "5e16"})
    doc = msgspec.json.decode(_mapper().map_document(raw).rows["orders"][0][3])
    assert doc["a"] == {"$numberDouble": "1e+16"}
    assert doc["b"] == [{"$numberDouble": "-2.5e+300"}]
    assert doc["c"] == 1e15 and doc["s"] == "5e16"


def test_dates_outside_python_range_survive() -> None:
    for ms in (-(2**62), 2**62, 253_402_300_800_000, -1):
        raw = bson.encode({"_id": 1, "d": DatetimeMS(ms)})
        mapper = _mapper()
        assert mapper.to_document(mapper.map_document(raw).rows)["d"] == DatetimeMS(ms)


def test_relaxed_date_in_iso_range_is_readable_text() -> None:
    raw = bson.encode({"_id": 1, "d": DatetimeMS(1_700_000_000_123)})
    doc = msgspec.json.decode(_mapper().map_document(raw).rows["orders"][0][3])
    assert doc["d"] == {"$date": "2023-11-14T22:13:20.123Z"}


def test_binary_subtype_zero_is_not_written_as_a_string() -> None:
    raw = bson.encode({"_id": 1, "b": b"\x00\x01", "u": Binary(b"0" * 16, 4)})
    doc = msgspec.json.decode(_mapper().map_document(raw).rows["orders"][0][3])
    assert doc["b"] == {"$binary": {"base64": "AAE=", "subType": "00"}}
    assert doc["u"]["$binary"]["subType"] == "04"


@pytest.mark.parametrize("path", ["top", "nested", "array"])
def test_string_with_nul_is_a_mapping_error_not_altered(path: str) -> None:
    value = "a\x00b"
    doc = {"top": {"_id": 1, "s": value}, "nested": {"_id": 1, "a": {"s": value}},
           "array": {"_id": 1, "a": [1, value]}}[path]
    with pytest.raises(MappingError):
        _mapper().map_document(bson.encode(doc))


def test_escaped_backslash_u0000_text_is_not_a_nul() -> None:
    raw = bson.encode({"_id": 1, "s": "\\u0000"})
    mapper = _mapper()
    assert mapper.to_document(mapper.map_document(raw).rows)["s"] == "\\u0000"


def test_subdocument_shaped_like_a_type_wrapper_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        _mapper().map_document(bson.encode({"_id": 1, "a": {"$oid": "not an id"}}))


@pytest.mark.parametrize("sub", [{"$regex": "^a", "$options": "i"}, {"$uuid": "x"},
                                 {"$oid": "x", "other": 1}, {"$in": [1, 2]}])
def test_dollar_subdocuments_no_parser_reads_as_a_type_are_kept(sub: dict[str, Any]) -> None:
    raw = bson.encode({"_id": 1, "saved_filter": {"name": sub}})
    mapper = _mapper()
    assert mapper.to_document(mapper.map_document(raw).rows) == bson.decode(raw)


def test_keys_with_dots_dollars_and_empty_names_are_kept() -> None:
    raw = bson.encode({"_id": 1, "": 1, "a.b": 2, "$x": 3, "n": {"$y": {"": [4]}}})
    mapper = _mapper()
    assert mapper.to_document(mapper.map_document(raw).rows) == bson.decode(raw)


def test_string_id_with_nul_has_a_key_but_its_document_is_dead_lettered() -> None:
    mapper = _mapper()
    assert mapper.map_key(bson.encode({"_id": "a\x00b"})) == encode_key_value("a\x00b")
    assert "\x00" not in render_id("a\x00b")
    with pytest.raises(MappingError):
        mapper.map_document(bson.encode({"_id": "a\x00b", "x": 1}))


@pytest.mark.parametrize("raw", [b"", b"\x05\x00\x00\x00", b"garbage-bytes-here",
                                 bson.encode({"_id": 1})[:-1]])
def test_malformed_bson_is_a_mapping_error(raw: bytes) -> None:
    with pytest.raises(MappingError):
        _mapper().map_document(raw)


def test_document_without_id_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        _mapper().map_document(bson.encode({"x": 1}))


def test_rule_sets_schema_table_and_json_column() -> None:
    config = MappingConfig(rules=(MappingRule("shop.*", schema="raw", table="m_{coll}",
                                              doc_column="body", json="canonical"),))
    mapper = resolve(config, "shop.orders")
    (shape,) = mapper.tables()
    assert (shape.schema, shape.name, shape.columns[-1].name) == ("raw", "m_orders", "body")
    doc = msgspec.json.decode(mapper.map_document(bson.encode({"_id": 1, "d": Decimal128("1.5")})
                                                  ).rows["m_orders"][0][3])
    assert doc == {"_id": {"$numberInt": "1"}, "d": {"$numberDecimal": "1.5"}}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [({"_id": 1, "a": "plain", "p": "$5.00 costs $"}, False),
     ({"_id": 1, "$x": 1}, True), ({"_id": 1, "a": {"$y": 1}}, True),
     ({"_id": 1, "a": float("nan")}, True), ({"_id": 1, "a": [float("-inf")]}, True),
     ({"_id": 1, "a": -0.0}, True)],
)
def test_fast_path_guard_spots_dollar_fields_and_non_finite_doubles(
        doc: dict[str, Any], expected: bool) -> None:
    assert needs_walker(bson.encode(doc)) is expected


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [(b'{"a":1e16}', True), (b'[2,-3.5e300]', True), (b"1e16", True),
     (b'{"a":1e-7}', False), (b'{"$oid":"65e1b2c3d4e5f60718293a4b"}', False),
     (b'{"s":"5e16"}', False), (b'{"s":"price 1e2"}', False), (b'{"a":15}', False),
     (b'{"a":1e40}', True)],
)
def test_exponent_guard_finds_numbers_not_hex_or_text(json_text: bytes, expected: bool) -> None:
    assert _has_positive_exponent(json_text) is expected


@given(id_values)
@settings(max_examples=200)
def test_map_key_of_an_id_document_equals_the_key_of_its_value(value: Any) -> None:
    id_bson = bson.encode({"_id": value})
    try:
        expected = encode_key_value(decode_id(id_bson))
    except MappingError:
        with pytest.raises(MappingError):
            id_key(id_bson)
        return
    assert id_key(id_bson) == expected
    assert DocumentMapper("s", "t").map_key(id_bson) == expected


@given(object_ids)
def test_map_key_of_an_object_id_is_its_type_byte_and_twelve_bytes(oid: ObjectId) -> None:
    assert id_key(bson.encode({"_id": oid})) == b"\x23" + oid.binary
