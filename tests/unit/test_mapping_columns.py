"""Column mode: typed columns from dotted paths, child tables, a jsonb rest; and back."""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
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
from hypothesis import strategies as st

from cdc.errors import MappingError
from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve
from cdc.mapping.columns import ColumnMapper
from cdc.mapping.ejson import to_ejson
from cdc.mapping.keys import encode_key_value
from tests.unit.bson_strategies import PROPERTY, object_ids, text_no_nul, values

RULE = MappingRule(
    "shop.orders", mode="column",
    columns=(ColumnRule("status", "text"), ColumnRule("customer.email", "text", "email"),
             ColumnRule("total", "double precision"), ColumnRule("n", "bigint"),
             ColumnRule("created", "timestamptz"), ColumnRule("owner", "objectid")),
    children=(ChildRule("items", "order_items",
                        (ColumnRule("sku", "text"), ColumnRule("qty", "integer"))),),
)


def _mapper(rule: MappingRule = RULE, json: str = "relaxed") -> ColumnMapper:
    mapper = resolve(MappingConfig(rules=(rule,), json=json), "shop.orders")  # type: ignore[arg-type]
    assert isinstance(mapper, ColumnMapper)
    return mapper


def test_root_and_child_table_shapes() -> None:
    root, child = _mapper().tables()
    assert [(c.name, c.pg_type) for c in root.columns] == [
        ("_key", "bytea"), ("_id", "text"), ("_id_bson", "bytea"), ("status", "text"),
        ("email", "text"), ("total", "double precision"), ("n", "bigint"),
        ("created", "timestamptz"), ("owner", "text"), ("_rest", "jsonb")]
    assert root.key_columns == ("_key",)
    assert (child.schema, child.name, child.parent) == ("shop", "order_items", "orders")
    assert [c.name for c in child.columns] == ["_key", "_ord", "sku", "qty", "_rest"]
    assert child.key_columns == ("_key", "_ord")


def test_lifted_values_leave_the_rest_and_children_get_parent_key_and_ordinal() -> None:
    owner = ObjectId()
    doc = {"_id": 7, "status": "paid", "customer": {"email": "a@b.c", "name": "A"},
           "total": 12.5, "n": Int64(3), "created": datetime.datetime(2024, 1, 2, 3, 4, 5),
           "owner": owner, "items": [{"sku": "x", "qty": 2, "note": "n"}, "loose"]}
    mapped = _mapper().map_document(bson.encode(doc))
    ((key, id_text, _, status, email, total, n, created, own, rest),) = mapped.rows["orders"]
    assert key == encode_key_value(7) and id_text == "7"
    assert (status, email, total, n, own) == ("paid", "a@b.c", 12.5, 3, str(owner))
    assert created == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert msgspec.json.decode(rest) == {"customer": {"name": "A"}}
    assert mapped.rows["order_items"] == [(key, 0, "x", 2, '{"note":"n"}'),
                                          (key, 1, None, None, '"loose"')]


def test_absent_path_is_null_and_explicit_null_stays_in_rest() -> None:
    mapper = _mapper()
    absent = mapper.map_document(bson.encode({"_id": 1}))
    null = mapper.map_document(bson.encode({"_id": 1, "status": None, "customer": None}))
    assert absent.rows["orders"][0][3:9] == null.rows["orders"][0][3:9] == (None,) * 6
    assert msgspec.json.decode(absent.rows["orders"][0][-1]) == {}
    assert msgspec.json.decode(null.rows["orders"][0][-1]) == {"status": None,
                                                               "customer": None}
    assert mapper.to_document(null.rows) == {"_id": 1, "status": None, "customer": None}
    assert mapper.to_document(absent.rows) == {"_id": 1}


def test_empty_or_non_array_child_path_stays_in_parent_rest() -> None:
    mapper = _mapper()
    items: Any
    for items in ([], "text", {"a": 1}):
        mapped = mapper.map_document(bson.encode({"_id": 1, "items": items}))
        assert mapped.rows["order_items"] == []
        assert mapper.to_document(mapped.rows) == {"_id": 1, "items": items}


@pytest.mark.parametrize(
    ("column_type", "bad"),
    [("text", 1), ("text", ObjectId()), ("text", "a\x00"), ("objectid", "65a1b2c3d4e5f607182"),
     ("bigint", 1.0), ("bigint", "1"), ("bigint", True), ("integer", Int64(2**31)),
     ("double precision", 1), ("double precision", Decimal128("1")),
     ("numeric", 1.5), ("numeric", 1), ("boolean", 1), ("timestamptz", "2024-01-01"),
     ("timestamptz", DatetimeMS(-(2**62))), ("uuid", Binary(b"x" * 16, 0)),
     ("uuid", Binary(b"x" * 15, 4)), ("bytea", Binary(b"x" * 16, 4)), ("bytea", "x")],
)
def test_value_the_column_type_cannot_hold_is_a_mapping_error(column_type: str,
                                                               bad: Any) -> None:
    rule = MappingRule("shop.orders", mode="column",
                       columns=(ColumnRule("v", column_type),))  # type: ignore[arg-type]
    with pytest.raises(MappingError):
        _mapper(rule).map_document(bson.encode({"_id": 1, "v": bad}))


def test_bad_value_in_a_child_element_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        _mapper().map_document(bson.encode({"_id": 1, "items": [{"qty": "two"}]}))


def _fits_decimal128(d: decimal.Decimal) -> bool:
    exponent = d.as_tuple().exponent
    return (not d.is_snan() and len(d.as_tuple().digits) <= 34 and isinstance(exponent, int)
            and -6176 <= exponent <= 6111 and not (d.is_zero() and d.is_signed()))


# Values each column type keeps exactly (int32 for bigint: int64 beyond int32 range).
_EXACT: dict[str, st.SearchStrategy[Any]] = {
    "text": text_no_nul,
    "objectid": object_ids,
    "bigint": st.integers(-(2**31), 2**31 - 1)
    | st.integers(2**31, 2**63 - 1).map(Int64) | st.integers(-(2**63), -(2**31) - 1).map(Int64),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "double precision": st.floats(),
    "numeric": st.decimals(places=None).filter(_fits_decimal128).map(
        lambda d: Decimal128(str(d))),
    "boolean": st.booleans(),
    "timestamptz": st.integers(-62_135_596_800_000, 253_402_300_799_999).map(DatetimeMS),
    "uuid": st.binary(min_size=16, max_size=16).map(lambda b: Binary(b, 4)),
    "bytea": st.binary(max_size=8).map(lambda b: Binary(b, 0)),
    "jsonb": values,
}
TYPES = sorted(_EXACT)
ALL_RULE = MappingRule(
    "shop.orders", mode="column",
    columns=tuple(ColumnRule(f"d.{t.replace(' ', '_')}", t)  # type: ignore[arg-type]
                  for t in TYPES),
    children=(ChildRule("arr", "arr_rows", (ColumnRule("x", "bigint"),
                                            ColumnRule("y.z", "text"))),),
)


@st.composite
def _column_documents(draw: st.DrawFn) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for t in TYPES:
        choice = draw(st.sampled_from(["absent", "null", "value"]))
        if choice != "absent":
            d[t.replace(" ", "_")] = None if choice == "null" else draw(_EXACT[t])
    d.update(draw(st.dictionaries(st.sampled_from(["other", "$x", ""]), values, max_size=2)))
    doc: dict[str, Any] = {"_id": draw(object_ids), "d": d}
    if draw(st.booleans()):
        element = st.fixed_dictionaries(
            {}, optional={"x": _EXACT["bigint"], "y": st.fixed_dictionaries(
                {}, optional={"z": text_no_nul, "w": values}), "k": values}) | values
        doc["arr"] = draw(st.lists(element, max_size=3))
    return doc


def _view(value: Any) -> Any:
    def one_nan(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: one_nan(x) for k, x in v.items()}
        if isinstance(v, list):
            return [one_nan(x) for x in v]
        return float("nan") if isinstance(v, float) and math.isnan(v) else v

    return to_ejson(one_nan(value), canonical=True)


@settings(PROPERTY, max_examples=300)
@given(_column_documents())
def test_canonical_column_mode_round_trips_every_type(doc: dict[str, Any]) -> None:
    mapper = _mapper(ALL_RULE, "canonical")
    raw = bson.encode(doc)
    try:
        mapped = mapper.map_document(raw)
    except MappingError:
        return  # U+0000 or wrapper-shaped keys inside jsonb values
    back = mapper.to_document(mapped.rows)
    assert _view(back) == _view(bson.decode(raw, mapper_codec()))


def mapper_codec() -> Any:
    from cdc.mapping.ejson import DECODE_OPTIONS

    return DECODE_OPTIONS


def test_column_values_have_the_python_types_the_sink_copies() -> None:
    rule = MappingRule("shop.orders", mode="column", columns=(
        ColumnRule("u", "uuid"), ColumnRule("m", "numeric"), ColumnRule("b", "bytea"),
        ColumnRule("j", "jsonb")))
    u = uuid.uuid4()
    raw = bson.encode({"_id": 1, "u": Binary(u.bytes, 4), "m": Decimal128("1.50"),
                       "b": b"\x00", "j": {"k": Int64(1)}})
    ((*_, uu, m, b, j, rest),) = _mapper(rule).map_document(raw).rows["orders"]
    assert (uu, m, b, rest) == (u, decimal.Decimal("1.50"), b"\x00", "{}")
    assert msgspec.json.decode(j) == {"k": 1}
