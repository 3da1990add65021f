"""The C extension writes exactly the relaxed Extended JSON of the Python path, or
leaves the document to it; damaged BSON never crashes it and ends as MappingError."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import MappingError
from cdc.mapping._fastejson import _set_buffer_capacity, relaxed
from cdc.mapping.document import DocumentMapper, key_parts
from cdc.mapping.ejson import decode, relaxed_json
from cdc.mapping.keys import id_bson_from_raw
from tests.unit.bson_strategies import PROPERTY, documents, int32s, int64s

Outcome = tuple[str, Any] | type[MappingError]


def _python(raw: bytes) -> Outcome:
    """What document mode wrote before the extension: (doc text, key parts) or the error."""
    try:
        doc = decode(raw)
        return relaxed_json(doc, raw).decode(), key_parts(doc, raw)
    except MappingError:
        return MappingError


def _mapper_outcome(raw: bytes) -> Outcome:
    try:
        ((key, id_text, id_bson, text),) = DocumentMapper("s", "t").map_document(raw).rows["t"]
    except MappingError:
        return MappingError
    return text, (key, id_text, id_bson)


def _check_equal_to_python(raw: bytes) -> str:
    """Assert the C result and the mapper agree with the Python path; return which way
    the C extension went ('handled', 'left' or 'malformed')."""
    expected = _python(raw)
    try:
        result = relaxed(raw)
    except ValueError:
        way = "malformed"
    else:
        if result is None:
            way = "left"
        else:
            way = "handled"
            assert not isinstance(expected, type), "C wrote a document Python refuses"
            key, id_text, id_bson, text = result
            assert text == expected[0]
            assert id_bson == id_bson_from_raw(raw) == expected[1][2]
            if raw[4:9] == b"\x07_id\x00":
                assert (key, id_text) == expected[1][:2]
            else:
                assert key is None and id_text is None
    assert _mapper_outcome(raw) == expected
    return way


def _doc(body: bytes) -> bytes:
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


# --- property tests -------------------------------------------------------------------

@settings(PROPERTY, max_examples=400)
@given(documents())
def test_c_writes_what_python_writes_for_any_document(doc: dict[str, Any]) -> None:
    way = _check_equal_to_python(bson.encode(doc))
    assert way != "malformed"  # bson.encode never writes malformed BSON


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00$"),
                 max_size=6)
_common_scalars = (
    st.none() | st.booleans() | int32s | int64s
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: abs(x) < 1e16)
    | st.sampled_from([0.0, 1.0, -1.5, 0.1, 1e-7, 1e15, 123456.789, 9999999999999998.0])
    | st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
    | st.binary(min_size=12, max_size=12).map(ObjectId)
    | st.builds(Binary, st.binary(max_size=5), st.sampled_from([0, 3, 4, 5, 128]))
    | st.integers(0, 253_402_300_799_999).map(DatetimeMS)
    | st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    | st.just(MinKey()) | st.just(MaxKey())
)
_common_values = st.recursive(
    _common_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(_names, c, max_size=4),
    max_leaves=16,
)


@settings(PROPERTY, max_examples=300)
@given(st.dictionaries(_names, _common_values, max_size=8), _common_scalars)
def test_c_handles_every_common_type_itself(rest: dict[str, Any], id_value: Any) -> None:
    raw = bson.encode({"_id": id_value, **rest})
    assert _check_equal_to_python(raw) == "handled"


def _damage(raw: bytes, data: st.DataObject) -> bytes:
    out = bytearray(raw)
    kind = data.draw(st.sampled_from(["truncate", "byte", "length", "splice"]))
    if kind == "truncate":
        cut = data.draw(st.integers(0, len(out) - 1))
        out = out[:cut]
        if data.draw(st.booleans()) and len(out) >= 4:
            out[0:4] = struct.pack("<i", len(out))  # a consistent outer length
    elif kind == "byte":
        for _ in range(data.draw(st.integers(1, 3))):
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "length":  # an int32 length field anywhere, often a real one
        pos = data.draw(st.integers(0, max(0, len(out) - 4)))
        value = data.draw(st.sampled_from([-1, 0, 1, 4, 5, 2**31 - 1, -(2**31)])
                          | st.integers(-8, len(out) + 8))
        out[pos:pos + 4] = struct.pack("<i", value)[: len(out) - pos]
    else:
        pos = data.draw(st.integers(4, len(out)))
        out[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
    return bytes(out)


@settings(PROPERTY, max_examples=600)
@given(documents(), st.data())
def test_damaged_bson_never_crashes_and_ends_like_python(doc: dict[str, Any],
                                                         data: st.DataObject) -> None:
    _check_equal_to_python(_damage(bson.encode(doc), data))


@settings(PROPERTY, max_examples=300)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash(raw: bytes) -> None:
    _check_equal_to_python(raw)


# --- targeted cases ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    -0.0, 0.0, 1e16, -1e16, 9999999999999998.0, 1e15, 5e-324, -5e-324, 1e-7, 1e-5, 0.1,
    1.7976931348623157e308, 2.0**53, 2.0**53 + 2, 29.970000000000002, 123.456, 1e-300,
    float("nan"), float("inf"), float("-inf"),
])
def test_double_text_matches_python(value: float) -> None:
    assert _check_equal_to_python(bson.encode({"_id": 1, "x": value, "a": [value]})) == (
        "handled")


@pytest.mark.parametrize("value", [
    2**31 - 1, -(2**31), Int64(2**63 - 1), Int64(-(2**63)), Int64(0), Int64(2**53 + 1),
])
def test_integer_extremes_match_python(value: int) -> None:
    assert _check_equal_to_python(bson.encode({"_id": value, "x": value})) == "handled"


@pytest.mark.parametrize("doc", [
    {"_id": 1, "a": [[[]], [[1, [2]], {}], []]},
    {"_id": 1, "": {"": [""]}},
    {"_id": 1, "k\"\\\n\t\x01\x1f\x7fé\U0001f600": "v\"\\\b\f\r\x02\u2028/"},
    {"_id": "x", "d": [DatetimeMS(0), DatetimeMS(253_402_300_799_999), DatetimeMS(-1),
                       DatetimeMS(253_402_300_800_000), DatetimeMS(951_782_400_000)]},
    {"_id": ObjectId(), "b": [Binary(b"", 0), Binary(b"a", 0), Binary(b"ab", 4),
                              Binary(b"abc", 0x80)]},
    {"_id": 1, "r": Regex("^a\"b", "xsmliu")},
    {"_id": {"a": 1}, "t": Timestamp(2**32 - 1, 0), "m": [MinKey(), MaxKey()]},
    {"_id": 1, "wide": {f"k{i}": i for i in range(200)}},
])
def test_edge_documents_are_written_by_c_exactly_like_python(doc: dict[str, Any]) -> None:
    assert _check_equal_to_python(bson.encode(doc)) == "handled"


def test_regex_options_are_normalised_like_bson() -> None:
    raw = _doc(b"\x10_id\x00\x01\x00\x00\x00" + b"\x0br\x00ab\x00xsmli ua\x00")
    assert _check_equal_to_python(raw) == "handled"
    result = relaxed(raw)
    assert result is not None and '"options":"ilmsux"' in result[3]


@pytest.mark.parametrize("doc", [
    {"_id": 1, "$x": 1},                     # '$' field name
    {"_id": 1, "a": {"$oid": "x"}},          # shaped like a type wrapper: MappingError
    {"_id": 1, "s": "a\x00b"},               # U+0000: MappingError
    {"_id": 1, "a": [1, {"s": "\x00"}]},
    {"_id": 1, "b": Binary(b"abc", 2)},      # old binary subtype
    {"x": 1},                                # no _id: MappingError
])
def test_rare_cases_are_left_to_python(doc: dict[str, Any]) -> None:
    assert _check_equal_to_python(bson.encode(doc)) == "left"


def test_duplicate_field_names_are_left_to_python_which_keeps_the_last() -> None:
    one = b"\x10a\x00\x01\x00\x00\x00"
    raw = _doc(b"\x10_id\x00\x01\x00\x00\x00" + one + b"\x10b\x00\x02\x00\x00\x00"
               + b"\x10a\x00\x03\x00\x00\x00")
    assert _check_equal_to_python(raw) == "left"
    many = b"".join(b"\x10k%d\x00\x01\x00\x00\x00" % i for i in range(100))
    assert _check_equal_to_python(_doc(b"\x10_id\x00\x01\x00\x00\x00" + many
                                       + b"\x10k99\x00\x01\x00\x00\x00")) == "left"
    assert _check_equal_to_python(_doc(b"\x10_id\x00\x01\x00\x00\x00" * 2)) == "left"


def test_array_element_names_other_than_indexes_are_left_to_python() -> None:
    array = _doc(b"\x10x\x00\x01\x00\x00\x00\x10\xff\x00\x02\x00\x00\x00")
    assert _check_equal_to_python(_doc(b"\x10_id\x00\x01\x00\x00\x00\x04a\x00" + array)) == (
        "left")


def test_nesting_deeper_than_mongodb_allows_is_left_to_python() -> None:
    value: Any = 1
    for _ in range(150):
        value = {"a": value}
    assert _check_equal_to_python(bson.encode({"_id": 1, "v": value})) == "left"


@pytest.mark.parametrize("body", [
    b"\x02s\x00\x03\x00\x00\x00\xc3(\x00",          # invalid UTF-8 in a string
    b"\x02s\x00\x03\x00\x00\x00\xed\xa0\x80",       # surrogate (no terminator either)
    b"\x02s\x00\x04\x00\x00\x00\xed\xa0\x80\x00",   # UTF-8-encoded surrogate
    b"\x02s\x00\x03\x00\x00\x00\xc0\xaf\x00",       # overlong
    b"\x10\xff\x00\x01\x00\x00\x00",                # invalid UTF-8 in a field name
    b"\x08b\x00\x02",                               # bool that is neither 0 nor 1
    b"\x02s\x00\x00\x00\x00\x00\x00",               # string length 0
    b"\x02s\x00\xff\xff\xff\x7f\x00",               # string length past the end
    b"\x05b\x00\xff\xff\xff\xff\x00",               # negative binary length
    b"\x03d\x00\x04\x00\x00\x00",                   # sub-document length below 5
    b"\x14x\x00",                                   # unknown type
])
def test_malformed_bson_raises_value_error_and_maps_to_mapping_error(body: bytes) -> None:
    raw = _doc(b"\x10_id\x00\x01\x00\x00\x00" + body)
    with pytest.raises(ValueError):
        relaxed(raw)
    assert _mapper_outcome(raw) is MappingError
    assert _python(raw) is MappingError


def test_relaxed_accepts_any_bytes_like_object_and_rejects_others() -> None:
    raw = bson.encode({"_id": 1, "s": "x"})
    assert relaxed(memoryview(raw)) == relaxed(bytearray(raw)) == relaxed(raw)
    with pytest.raises(TypeError):
        relaxed("not bytes")  # type: ignore[arg-type]


def test_repeated_calls_keep_no_memory() -> None:
    docs = [bson.encode({"_id": ObjectId(), "s": "é" * 50, "a": [1.5, {"b": b"xy"}]}),
            bson.encode({"_id": 1, "s": "a\x00"}), b"\x05\x00\x00\x00\x01"]

    def run(times: int) -> None:
        for _ in range(times):
            for raw in docs:
                try:
                    relaxed(raw)
                except ValueError:
                    pass

    run(200)
    tracemalloc.start()
    try:
        run(200)
        before = tracemalloc.get_traced_memory()[0]
        run(5000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024


@pytest.mark.parametrize("text", ["a", "é", "\U0001f600", "x" * 1000])
def test_strings_survive_as_the_same_text(text: str) -> None:
    result = relaxed(bson.encode({"_id": 1, "s": text}))
    assert result is not None
    assert bson.decode(bson.encode({"_id": 1, "s": text}))["s"] == text
    assert result[3].endswith(f'"s":"{text}"}}')



def _sized(doc: dict[str, Any], first_byte: int) -> bytes:
    """``doc`` padded so the low byte of its length is ``first_byte``."""
    pad = 0
    while True:
        raw = bson.encode({**doc, "pad": "x" * pad})
        if raw[0] == first_byte:
            return raw
        pad += 1


@pytest.mark.parametrize(("doc", "first"), [
    ({"_id": 1, "x": float("nan")}, 0x7F), ({"_id": 1, "x": float("-inf")}, 0xFF),
    ({"_id": 1, "a": {"$oid": "x"}}, ord("$")),
])
def test_python_path_scan_is_not_fooled_by_the_documents_length_byte(
        doc: dict[str, Any], first: int) -> None:
    # Found by the property test: a length byte equal to the byte scanned for ended
    # needs_walker's scan, and the Python path wrote NaN as null.
    raw = _sized(doc, first)
    _check_equal_to_python(raw)
    expected = _python(raw)
    if "a" in doc:
        assert expected is MappingError
    else:
        assert not isinstance(expected, type) and '"$numberDouble"' in expected[0]


@pytest.mark.parametrize("special", ["", '"', "\\", "\x01", "\x1f", "\x7f", "é", "\U0001f600"])
def test_names_and_strings_of_every_length_with_a_special_character_anywhere(
        special: str) -> None:
    # Names and strings are scanned eight bytes at a time: cover every position.
    for length in range(0, 20):
        for at in range(length + 1):
            text = "n" * at + special + "m" * (length - at)
            doc = {"_id": 1, text: text, "x": {text + "y": [text]}}
            assert _check_equal_to_python(bson.encode(doc)) == "handled"



@pytest.mark.parametrize("value", [
    Timestamp(2**32 - 1, 2**32 - 1), -1.7976931348623157e308, -2.2250738585072014e-308,
    -1.2345678901234567e-5, 1234567890123456.0, Int64(-(2**63)), DatetimeMS(-(2**63)),
    DatetimeMS(253_402_300_799_999), MinKey(), MaxKey(), False, None, "\x01" * 5,
    Binary(b"\xff" * 7, 0x80), ObjectId(b"\xff" * 12), Regex("\x01\"", "imsux"),
    {"é\x01": [{}]},
])
def test_every_write_is_whole_wherever_the_output_buffer_ends(value: Any) -> None:
    # Each capacity puts a buffer boundary at a different write (under AddressSanitizer
    # an overrun past the reservation aborts; here a cut value would not compare equal).
    raw = bson.encode({"_id": 1, "v": value, "w": [value, {"k\x02": value}]})
    expected = _python(raw)
    assert not isinstance(expected, type)
    try:
        for capacity in range(0, len(expected[0]) + 2):
            _set_buffer_capacity(capacity)
            result = relaxed(raw)
            assert result is not None and result[3] == expected[0]
    finally:
        _set_buffer_capacity(0)


def test_document_mode_is_wired_to_the_c_extension() -> None:
    from cdc.mapping import ejson

    assert ejson._relaxed_c is relaxed
    raw = bson.encode({"_id": ObjectId(), "a": 1})
    assert ejson.fast_relaxed(raw) == relaxed(raw)
    assert ejson.fast_relaxed(b"\x05\x00\x00\x00\x01") is None  # malformed: Python decides
