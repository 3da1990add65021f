"""Hypothesis strategies for BSON values and a reference implementation of MongoDB's
comparison order, written independently of the key encoding it is used to check.

The reference follows the manual's "Comparison/Sort Order" page and the server's
``BSONElement::woCompare``: canonical type rank first; numbers by exact value (NaN
below all, -0.0 == 0.0); strings by UTF-8 bytes; objects element by element (type, then
field name, then value; the shorter object first); binData by length, then subtype, then
bytes; regex by pattern then flags; code with scope by code then scope.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import settings
from hypothesis import strategies as st

PROPERTY = settings(deadline=None, derandomize=True)
"""Settings of the mapping's property tests: deterministic (same examples every run)."""

# --- strategies ---------------------------------------------------------------------------

int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1).map(Int64)
edge_ints = st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 2**53, 2**53 + 1]) | st.sampled_from(
    [Int64(2**63 - 1), Int64(-(2**63)), Int64(2**53 + 1), Int64(0), Int64(1)]
)
# One NaN: Extended JSON keeps no NaN sign or payload bits (documented).
doubles = st.floats(allow_nan=False, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.1, 5e-324, -5e-324, 1.7976931348623157e308, 2.0**63, 1e16,
     float("nan"), float("inf"), float("-inf"), 9007199254740993.0]
)
_decimal_texts = st.sampled_from(
    ["0", "-0", "1", "1.0", "1.00", "-1", "0.1", "NaN", "Infinity", "-Infinity",
     "9.999999999999999999999999999999999E+6144", "1E-6176", "-1E-6176",
     "9223372036854775807", "9223372036854775808", "1E+308", "1E+309", "123.456"]
)


def _fits_decimal128(d: Decimal) -> bool:
    exponent = d.as_tuple().exponent
    return len(d.as_tuple().digits) <= 34 and isinstance(exponent, int) and (
        -6176 <= exponent <= 6111)


decimals = _decimal_texts.map(Decimal128) | st.decimals(
    allow_nan=False, allow_infinity=False, places=None
).filter(_fits_decimal128).map(lambda d: Decimal128(str(d)))
numbers = int32s | int64s | edge_ints | doubles | decimals

strings = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ["", "a", "a\x00", "a\x00b", "\x00", "é", "z", "\U0001f600", "ab", "a\x01"]
)
text_no_nul = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                      max_size=8)
field_names = text_no_nul | st.sampled_from(["", "a.b", "$x", "_id", "a"])
object_ids = st.binary(min_size=12, max_size=12).map(ObjectId)
binaries = st.builds(Binary, st.binary(max_size=2), st.sampled_from([0, 1, 2, 3, 4, 5, 128]))
uuids_bin = st.builds(Binary, st.binary(min_size=16, max_size=16), st.sampled_from([3, 4]))
dates = st.integers(-(2**63), 2**63 - 1).map(DatetimeMS) | st.sampled_from(
    [DatetimeMS(0), DatetimeMS(-1), DatetimeMS(253_402_300_799_999),
     DatetimeMS(253_402_300_800_000), DatetimeMS(-62_135_596_800_000)]
)
timestamps = st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
regexes = st.builds(
    Regex, text_no_nul,
    st.lists(st.sampled_from("imsux"), unique=True).map(lambda x: "".join(sorted(x))),
)

scalars = (
    st.none() | st.booleans() | numbers | strings | object_ids | binaries | uuids_bin | dates
    | timestamps | regexes | st.builds(Code, text_no_nul) | st.just(MinKey())
    | st.just(MaxKey())
)


def _docs(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(field_names, children, max_size=4)


values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | _docs(children)
    | st.builds(Code, text_no_nul, _docs(children))
    | st.builds(DBRef, text_no_nul, children),
    max_leaves=12,
)
"""Any BSON value the bson package decodes to (with the mapping's decode options)."""

# Values allowed as _id (no arrays, regexes or undefined, per the manual), plus MinKey.
id_values = st.recursive(
    st.none() | st.booleans() | numbers | strings | object_ids | binaries | dates
    | timestamps | st.just(MinKey()) | st.just(MaxKey()),
    lambda children: _docs(children | st.lists(children, max_size=3)),
    max_leaves=6,
)


def documents(value_strategy: st.SearchStrategy[Any] = values) -> st.SearchStrategy[
        dict[str, Any]]:
    """Documents with ``_id`` first, as MongoDB stores them."""
    return st.builds(
        lambda i, rest: {"_id": i, **{k: v for k, v in rest.items() if k != "_id"}},
        id_values, st.dictionaries(field_names, value_strategy, max_size=6),
    )


# --- reference comparison -------------------------------------------------------------------

_RANK: list[tuple[type, int]] = [
    (MinKey, -1), (type(None), 5), (bool, 40), (int, 10), (float, 10), (Decimal128, 10),
    (str, 15), (dict, 20), (DBRef, 20), (list, 25), (Binary, 30), (bytes, 30),
    (ObjectId, 35), (DatetimeMS, 45), (Timestamp, 47), (Regex, 50), (MaxKey, 127),
]


def rank(value: Any) -> int:
    if isinstance(value, Code):
        return 60 if value.scope is None else 65
    for cls, r in _RANK:
        if isinstance(value, cls):
            return r
    raise TypeError(type(value))


def _num(value: Any) -> Fraction | str:
    """Exact value, or 'nan' / 'inf' / '-inf'."""
    if isinstance(value, Decimal128):
        d = value.to_decimal()
        if d.is_nan():
            return "nan"
        if d.is_infinite():
            return "-inf" if d.is_signed() else "inf"
        return Fraction(d)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return Fraction(value)
    return Fraction(int(value))


def _num_order(x: Fraction | str) -> tuple[int, Fraction]:
    if x == "nan":
        return (0, Fraction(0))
    if x == "-inf":
        return (1, Fraction(0))
    if x == "inf":
        return (3, Fraction(0))
    assert isinstance(x, Fraction)
    return (2, x)


def _cmp(a: Any, b: Any) -> int:
    return int((a > b) - (a < b))


def _items(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, DBRef):
        return list(value.as_doc().items())
    return list(value.items())


def compare(a: Any, b: Any) -> int:
    """MongoDB's order of two BSON values: -1, 0 or 1."""
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return _cmp(ra, rb)
    if ra == 10:
        return _cmp(_num_order(_num(a)), _num_order(_num(b)))
    if ra in (15, 60):
        return _cmp(str(a).encode("utf-8"), str(b).encode("utf-8"))
    if ra == 20:
        return _compare_elements(_items(a), _items(b), named=True)
    if ra == 25:
        return _compare_elements([("", x) for x in a], [("", y) for y in b], named=False)
    if ra == 30:
        sa = a.subtype if isinstance(a, Binary) else 0
        sb = b.subtype if isinstance(b, Binary) else 0
        return _cmp((len(a), sa, bytes(a)), (len(b), sb, bytes(b)))
    if ra == 35:
        return _cmp(a.binary, b.binary)
    if ra == 40:
        return _cmp(a, b)
    if ra == 45:
        return _cmp(int(a), int(b))
    if ra == 47:
        return _cmp((a.time, a.inc), (b.time, b.inc))
    if ra == 50:
        return _cmp((a.pattern.encode(), _letters(a.flags)),
                    (b.pattern.encode(), _letters(b.flags)))
    if ra == 65:
        c = _cmp(str(a).encode(), str(b).encode())
        return c or compare(dict(a.scope), dict(b.scope))
    return 0  # MinKey, null, MaxKey: one value each


def _letters(flags: int) -> str:
    import re

    table = (("i", re.I), ("l", re.L), ("m", re.M), ("s", re.S), ("u", re.U), ("x", re.X))
    return "".join(letter for letter, flag in table if flags & flag)


def _compare_elements(xs: list[tuple[str, Any]], ys: list[tuple[str, Any]], named: bool) -> int:
    for (na, va), (nb, vb) in zip(xs, ys, strict=False):
        c = _cmp(rank(va), rank(vb))
        if c:
            return c
        if named:
            c = _cmp(na.encode(), nb.encode())
            if c:
                return c
        c = compare(va, vb)
        if c:
            return c
    return _cmp(len(xs), len(ys))


__all__ = ["PROPERTY", "Decimal", "compare", "documents", "id_values", "numbers", "values"]
