"""MongoDB's BSON comparison order as Python sort keys.

:func:`sort_key` maps any decoded BSON value to a tuple that Python orders exactly as
MongoDB compares values (manual, "Comparison/Sort Order"): first by canonical type rank
MinKey < null < numbers < string/symbol < object < array < binData < ObjectId < bool <
date < timestamp < regex < MaxKey, then within a type: numbers by value across int32,
int64, double and decimal128 (NaN below every other number), strings by their UTF-8
bytes, objects field by field (type rank, name, value), arrays element by element, binary
data by length then subtype then bytes. Equal numbers of different types get equal keys
(as in a unique index, ``1`` and ``1.0`` are the same ``_id``), so the keys double as
dictionary keys for the ``_id`` index.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from typing import Any

from bson.binary import Binary
from bson.code import Code
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

SortKey = tuple[Any, ...]

_MINKEY, _NULL, _NUMBER, _STRING, _OBJECT, _ARRAY, _BINARY = 1, 5, 10, 15, 20, 25, 30
_OBJECTID, _BOOL, _DATE, _TIMESTAMP, _REGEX, _CODE, _MAXKEY = 35, 40, 45, 47, 50, 60, 127
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _number(value: int | float | decimal.Decimal) -> SortKey:
    if isinstance(value, float | decimal.Decimal) and value != value:  # NaN
        return (_NUMBER, 0, 0)
    return (_NUMBER, 1, value)


def _millis(value: datetime.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def sort_key(value: Any) -> SortKey:
    """The MongoDB comparison key of one decoded BSON value."""
    if isinstance(value, bool):
        return (_BOOL, value)
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return (_STRING, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, ObjectId):
        return (_OBJECTID, value.binary)
    if value is None:
        return (_NULL,)
    if isinstance(value, dict):
        return (_OBJECT, tuple((sort_key(v)[0], k.encode(), sort_key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (_ARRAY, tuple(sort_key(v) for v in value))
    if isinstance(value, Decimal128):
        return _number(value.to_decimal())
    if isinstance(value, datetime.datetime):
        return (_DATE, _millis(value))
    if isinstance(value, Binary):
        return (_BINARY, len(value), value.subtype, bytes(value))
    if isinstance(value, bytes):
        return (_BINARY, len(value), 0, value)
    if isinstance(value, uuid.UUID):
        return (_BINARY, 16, 4, value.bytes)
    if isinstance(value, Timestamp):
        return (_TIMESTAMP, value.time, value.inc)
    if isinstance(value, Regex):
        return (_REGEX, value.pattern, value.flags)
    if isinstance(value, re.Pattern):
        return (_REGEX, value.pattern, value.flags)
    if isinstance(value, MinKey):
        return (_MINKEY,)
    if isinstance(value, MaxKey):
        return (_MAXKEY,)
    if isinstance(value, Code):
        return (_CODE, str(value))
    if isinstance(value, DBRef):
        return sort_key(value.as_doc().to_dict())
    if isinstance(value, decimal.Decimal):
        return _number(value)
    if hasattr(value, "items"):  # RawBSONDocument and other mappings
        return sort_key(dict(value.items()))
    raise TypeError(f"no BSON order for {type(value).__name__}")


__all__ = ["SortKey", "sort_key"]
