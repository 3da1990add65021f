"""BSON comparison order, as far as chunk planning needs it, and ``_id`` range filters.

MongoDB orders values of different types by *type bracket* (MinKey < null < numbers <
string < object < array < binary < ObjectId < bool < date < timestamp < regex <
MaxKey) and compares values within a bracket (numbers by value across int32, int64,
double and decimal). A chunk is an interval ``[lower, upper)`` of that total order,
where ``None`` stands for an open end.

A comparison operator in a query only matches values of its own bracket
(``{_id: {$gte: 5}}`` never matches a string), so an interval that crosses brackets is
expressed as a union: ``>= lower`` inside the lower bound's bracket, every bracket
strictly between by ``$type``, and ``< upper`` inside the upper bound's bracket
(:func:`range_filter`). Open ends are limited to the brackets that actually hold
documents at read time (the caller passes the brackets of the current minimum and
maximum ``_id``): a document of a bracket outside that span did not exist when the read
started, so the change stream — opened earlier — delivers it.

Split points are taken only from brackets whose in-bracket order we reproduce exactly
(:func:`splittable`): numbers, strings (UTF-8 byte order is code-point order), ObjectId
and dates. Other brackets (compound ``_id`` objects, binary…) stay whole inside one
chunk: less parallel, never wrong.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import re
from typing import Any

import bson
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


class Bracket(enum.IntEnum):
    """BSON type brackets in MongoDB's comparison order."""

    MINKEY = 0
    NULL = 1
    NUMBER = 2
    STRING = 3
    OBJECT = 4
    ARRAY = 5
    BINARY = 6
    OBJECTID = 7
    BOOL = 8
    DATE = 9
    TIMESTAMP = 10
    REGEX = 11
    MAXKEY = 12


# ``$type`` aliases per bracket (a query on the bracket as a whole).
_TYPE_ALIASES: dict[Bracket, str] = {
    Bracket.MINKEY: "minKey",
    Bracket.NUMBER: "number",
    Bracket.STRING: "string",
    Bracket.OBJECT: "object",
    Bracket.ARRAY: "array",
    Bracket.BINARY: "binData",
    Bracket.OBJECTID: "objectId",
    Bracket.BOOL: "bool",
    Bracket.DATE: "date",
    Bracket.TIMESTAMP: "timestamp",
    Bracket.REGEX: "regex",
    Bracket.MAXKEY: "maxKey",
}


def bracket(value: Any) -> Bracket:
    """The type bracket of a decoded BSON value."""
    if value is None:
        return Bracket.NULL
    if isinstance(value, bool):  # before int: bool is an int subclass in Python
        return Bracket.BOOL
    if isinstance(value, int | float | Int64 | Decimal128 | decimal.Decimal):
        return Bracket.NUMBER
    if isinstance(value, str):
        return Bracket.STRING
    if isinstance(value, ObjectId):
        return Bracket.OBJECTID
    if isinstance(value, datetime.datetime | DatetimeMS):
        return Bracket.DATE
    if isinstance(value, bytes | Binary):
        return Bracket.BINARY
    if isinstance(value, Timestamp):
        return Bracket.TIMESTAMP
    if isinstance(value, Regex | re.Pattern):
        return Bracket.REGEX
    if isinstance(value, MinKey):
        return Bracket.MINKEY
    if isinstance(value, MaxKey):
        return Bracket.MAXKEY
    if isinstance(value, list | tuple):
        return Bracket.ARRAY
    if isinstance(value, Code):  # JavaScript sorts after regex in the server; rare as _id
        return Bracket.REGEX
    if isinstance(value, dict | DBRef) or hasattr(value, "keys"):
        return Bracket.OBJECT
    raise TypeError(f"unsupported BSON value type {type(value).__name__}")


def splittable(value: Any) -> bool:
    """Whether ``value`` may serve as a split point (its in-bracket order is exact here)."""
    b = bracket(value)
    if b is Bracket.NUMBER:
        return not isinstance(value, Decimal128) and not (
            isinstance(value, float) and math.isnan(value)
        )
    return b in (Bracket.STRING, Bracket.OBJECTID, Bracket.DATE)


def sort_key(value: Any) -> tuple[int, Any]:
    """Total-order key for splittable values, matching MongoDB's comparison."""
    b = bracket(value)
    if b is Bracket.NUMBER:
        return (b, float(value) if isinstance(value, float) else int(value))
    if b is Bracket.STRING:
        return (b, value.encode("utf-8"))
    if b is Bracket.OBJECTID:
        return (b, value.binary)
    if b is Bracket.DATE:
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            return (b, value.timestamp())
        return (b, int(value) / 1000.0)
    raise TypeError(f"no split order for BSON bracket {b.name}")


def _whole_bracket(b: Bracket) -> dict[str, Any]:
    if b is Bracket.NULL:
        # ``{_id: null}`` matches null (and missing, which _id never is).
        return {"_id": None}
    return {"_id": {"$type": _TYPE_ALIASES[b]}}


def range_filter(
    lower: Any | None,
    upper: Any | None,
    *,
    lowest: Bracket = Bracket.MINKEY,
    highest: Bracket = Bracket.MAXKEY,
) -> dict[str, Any]:
    """A ``find`` filter matching ``lower <= _id < upper`` in BSON order.

    ``None`` is an open end. ``lowest``/``highest`` are the brackets of the smallest and
    largest ``_id`` present; whole brackets outside them are left out of the filter.
    """
    if lower is None and upper is None:
        return {}
    lo_b = bracket(lower) if lower is not None else lowest
    hi_b = bracket(upper) if upper is not None else highest
    if lower is not None and upper is not None and lo_b == hi_b:
        return {"_id": {"$gte": lower, "$lt": upper}}
    parts: list[dict[str, Any]] = []
    if lower is not None:
        parts.append({"_id": {"$gte": lower}})
    else:
        if lowest <= hi_b and (upper is None or lowest < hi_b):
            parts.append(_whole_bracket(lowest))
    first_between = lo_b + 1
    last_between = hi_b - 1 if upper is not None else hi_b
    for b in range(max(first_between, lowest), min(last_between, highest) + 1):
        if lower is None and b == lowest:
            continue  # already added as the open lower end
        parts.append(_whole_bracket(Bracket(b)))
    if upper is not None:
        parts.append({"_id": {"$lt": upper}})
    if not parts:
        # Empty interval (nothing of the span present): match nothing, cheaply.
        return {"_id": {"$in": []}}
    if len(parts) == 1:
        return parts[0]
    return {"$or": parts}


def encode_bound(value: Any | None) -> bytes | None:
    """A chunk bound as stored in the control schema: BSON ``{"v": bound}``, or NULL."""
    if value is None:
        return None
    return bson.encode({"v": value})


def decode_bound(raw: bytes | None) -> Any | None:
    if raw is None:
        return None
    return bson.decode(raw)["v"]
