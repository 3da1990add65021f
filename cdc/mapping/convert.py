"""BSON value ⇄ typed PostgreSQL column value, one converter pair per column type.

Each column type accepts exactly the BSON types it can hold without changing the value;
anything else raises :class:`MappingError` (the document is dead-lettered, never
coerced). The reverse gives back the BSON type listed in the README's conversion table.
A converter never sees ``null``: an explicit null stays in the rest column, so that
``NULL`` in a typed column always means "field absent".

==================  ===========================  =========================================
column type         accepts                      back as
==================  ===========================  =========================================
text                string                       string
objectid (text)     ObjectId (24 hex digits)     ObjectId
bigint              int32, int64                 int32 if it fits, else int64
integer             int32, int64 in int32 range  int32
double precision    double (NaN, ±Inf, -0.0)     double
numeric             Decimal128 (NaN, ±Inf)       Decimal128 (same value; -0 → 0)
boolean             bool                         bool
timestamptz         date in years 1..9999        date
uuid                binData subtype 4 or 3       binData subtype 4 (3 comes back as 4)
bytea               binData subtype 0            binData subtype 0
jsonb               anything                     exact in canonical, as jsonb in relaxed
==================  ===========================  =========================================
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from typing import Any

from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId

from cdc.errors import MappingError
from cdc.mapping.ejson import INT32_MAX, INT32_MIN, from_ejson, to_ejson
from cdc.mapping.keys import datetime_to_ms

_UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MIN_MS = datetime_to_ms(datetime.datetime(1, 1, 1, tzinfo=_UTC))
_MAX_MS = datetime_to_ms(datetime.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=_UTC))

PG_TYPES = {"objectid": "text"}
"""Mapping types that are not PostgreSQL type names, and the column type they use."""


def pg_type(mapping_type: str) -> str:
    return PG_TYPES.get(mapping_type, mapping_type)


def _reject(value: Any, mapping_type: str) -> MappingError:
    return MappingError(f"a {type(value).__name__} value cannot go into a {mapping_type} "
                        "column")


def _text(value: Any) -> Any:
    if type(value) is not str:
        raise _reject(value, "text")
    if "\x00" in value:
        raise MappingError("a string contains U+0000, which PostgreSQL cannot store")
    return value


def _objectid(value: Any) -> Any:
    if type(value) is not ObjectId:
        raise _reject(value, "objectid")
    return str(value)


def _bigint(value: Any) -> Any:
    if type(value) is int or type(value) is Int64:
        return int(value)
    raise _reject(value, "bigint")


def _integer(value: Any) -> Any:
    if (type(value) is int or type(value) is Int64) and INT32_MIN <= value <= INT32_MAX:
        return int(value)
    raise _reject(value, "integer")


def _double(value: Any) -> Any:
    if type(value) is not float:
        raise _reject(value, "double precision")
    return value


def _numeric(value: Any) -> Any:
    if type(value) is not Decimal128:
        raise _reject(value, "numeric")
    return value.to_decimal()


def _boolean(value: Any) -> Any:
    if type(value) is not bool:
        raise _reject(value, "boolean")
    return value


def _timestamptz(value: Any) -> Any:
    if type(value) is not DatetimeMS:
        raise _reject(value, "timestamptz")
    ms = int(value)
    if not _MIN_MS <= ms <= _MAX_MS:
        raise MappingError("a date outside years 1..9999 cannot go into a timestamptz column "
                           "(map it as jsonb)")
    return _EPOCH + datetime.timedelta(milliseconds=ms)


def _uuid(value: Any) -> Any:
    if type(value) is Binary and value.subtype in (3, 4) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    raise _reject(value, "uuid")


def _bytea(value: Any) -> Any:
    if type(value) is Binary and value.subtype == 0:
        return bytes(value)
    raise _reject(value, "bytea")


def _int_back(value: Any) -> Any:
    return int(value) if INT32_MIN <= value <= INT32_MAX else Int64(value)


def _date_back(value: Any) -> Any:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return DatetimeMS(datetime_to_ms(value))


def _numeric_back(value: Any) -> Any:
    if not isinstance(value, decimal.Decimal):
        value = decimal.Decimal(str(value))
    return Decimal128(value)


Forward = Callable[[Any], Any]
Backward = Callable[[Any], Any]

CONVERTERS: dict[str, tuple[Forward, Backward]] = {
    "text": (_text, str),
    "objectid": (_objectid, ObjectId),
    "bigint": (_bigint, _int_back),
    "integer": (_integer, int),
    "double precision": (_double, float),
    "numeric": (_numeric, _numeric_back),
    "boolean": (_boolean, bool),
    "timestamptz": (_timestamptz, _date_back),
    "uuid": (_uuid, lambda v: Binary(v.bytes, 4)),
    "bytea": (_bytea, lambda v: Binary(bytes(v), 0)),
}


def json_converters(canonical: bool) -> tuple[Forward, Backward]:
    """The jsonb column converter pair for a JSON flavour."""
    import msgspec

    def forward(value: Any) -> Any:
        return msgspec.json.encode(to_ejson(value, canonical)).decode()

    return forward, from_ejson


def converters(mapping_type: str, canonical: bool) -> tuple[Forward, Backward]:
    if mapping_type == "jsonb":
        return json_converters(canonical)
    return CONVERTERS[mapping_type]
