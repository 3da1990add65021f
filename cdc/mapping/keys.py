"""Order-preserving binary encoding of ``_id`` values: memcmp order == MongoDB's order.

The primary key of every root table is ``_key bytea``, the bytes :func:`encode_key_value`
makes of the document's ``_id``. PostgreSQL compares ``bytea`` like ``memcmp`` (then by
length), and the encoding is built so that this order is exactly the order in which
MongoDB sorts ``_id`` values (the comparison order of the manual's "Comparison/Sort
Order" page). A backfill chunk ``[lower, upper)`` read from MongoDB therefore covers
exactly the rows ``lower_key <= _key < upper_key`` in PostgreSQL, and a verifier can walk
both sides in step.

Layout: one type byte per value, ranked like MongoDB's canonical types (MinKey < null <
numbers < string/symbol < object < array < binData < ObjectId < bool < date < timestamp
< regex < code < code-with-scope < MaxKey), then a body:

* numbers (int32, int64, double, Decimal128 share one rank and compare by value):
  a class byte (NaN < -inf < negative < zero < positive < +inf; MongoDB sorts NaN below
  every number), then for finite non-zero values the decimal exponent (uint16, offset
  0x8000) and the significant digits packed two per byte (1..100) ending in 0x00; the
  whole body is inverted (``0xff - b``) for negative numbers. Values that are equal in
  MongoDB (``1``, ``1.0``, ``NumberLong(1)``, ``NumberDecimal("1.00")``, ``-0.0``)
  encode identically — MongoDB's unique ``_id`` index treats them as one key too. The
  exact BSON type is kept beside the key (``_id_bson``) for the reverse mapping.
* strings: the UTF-8 bytes with ``00`` escaped as ``00 ff``, ended by ``00 00``
  (binary order, which is MongoDB's order without a collation).
* objects: per element the type byte, the field name + ``00``, the body; ended by ``00``
  (MongoDB compares element by element: type, then name, then value; shorter first).
  Arrays: the same without names.
* binData: length (uint32), subtype, bytes (MongoDB compares length first).
* ObjectId: its 12 bytes; bool: one byte; date: int64 ms + 2**63; Timestamp: t, i as
  uint32; regex: pattern + ``00`` + flags + ``00``; code: like a string.

Known difference: MongoDB compares a double with a Decimal128 after rounding the double
to 34 significant digits; this encoding compares exact values, so the two orders differ
only for a double and a decimal that agree in their first 34 digits.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import bson
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

from cdc.errors import MappingError

# Type bytes, ranked like MongoDB's canonical types (bsontypes.h canonicalizeBSONType).
T_MINKEY = 0x01
T_NULL = 0x05
T_NUMBER = 0x0A
T_STRING = 0x0F
T_OBJECT = 0x14
T_ARRAY = 0x19
T_BINARY = 0x1E
T_OBJECTID = 0x23
T_BOOL = 0x28
T_DATE = 0x2D
T_TIMESTAMP = 0x2F
T_REGEX = 0x32
T_CODE = 0x3C
T_CODE_W_SCOPE = 0x41
T_MAXKEY = 0x64

# Number classes (second byte of a number).
_N_NAN = 0x00
_N_NEG_INF = 0x01
_N_NEG = 0x02
_N_ZERO = 0x03
_N_POS = 0x04
_N_POS_INF = 0x05

_PAIR = {f"{a}{b}": 1 + a * 10 + b for a in range(10) for b in range(10)}
_INVERT = bytes(0xFF - b for b in range(256))
_MS_OFFSET = 1 << 63

_NAN_BODY = bytes([_N_NAN])
_ZERO_BODY = bytes([_N_ZERO])
_NEG_INF_BODY = bytes([_N_NEG_INF])
_POS_INF_BODY = bytes([_N_POS_INF])


def _digits_body(negative: bool, digits: str, exponent: int) -> bytes:
    """Body of the finite non-zero number ``digits * 10**exponent`` (digits w/o sign)."""
    stripped = digits.lstrip("0").rstrip("0")
    # value = 0.<stripped> * 10**adjusted
    adjusted = len(digits.lstrip("0")) + exponent
    if len(stripped) % 2:
        stripped += "0"
    packed = bytes(_PAIR[stripped[i : i + 2]] for i in range(0, len(stripped), 2))
    body = struct.pack(">H", adjusted + 0x8000) + packed + b"\x00"
    if negative:
        return bytes([_N_NEG]) + body.translate(_INVERT)
    return bytes([_N_POS]) + body


def _int_body(value: int) -> bytes:
    if value == 0:
        return _ZERO_BODY
    return _digits_body(value < 0, str(abs(value)), 0)


def _decimal_body(value: decimal.Decimal) -> bytes:
    if value.is_nan():
        return _NAN_BODY
    if value.is_infinite():
        return _NEG_INF_BODY if value.is_signed() else _POS_INF_BODY
    if value.is_zero():
        return _ZERO_BODY
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    return _digits_body(bool(sign), "".join(map(str, digits)), exponent)


def _float_body(value: float) -> bytes:
    if value != value:
        return _NAN_BODY
    if value == 0.0:
        return _ZERO_BODY
    if value in (float("inf"), float("-inf")):
        return _POS_INF_BODY if value > 0 else _NEG_INF_BODY
    if value.is_integer():
        return _int_body(int(value))
    return _decimal_body(decimal.Decimal(value))  # exact binary value


def number_body(value: int | float | Decimal128) -> bytes:
    """The body of a number (without the type byte); equal values give equal bytes."""
    if isinstance(value, float):
        return _float_body(value)
    if isinstance(value, Decimal128):
        return _decimal_body(value.to_decimal())
    return _int_body(int(value))


def _cstring(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if b"\x00" in data:
        raise MappingError("a field name, regex or cstring contains U+0000")
    return data + b"\x00"


def _string_body(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def _elements(value: Any, out: bytearray) -> None:
    """Append type byte + body of ``value`` to ``out``."""
    t = type(value)
    if t is ObjectId:
        out.append(T_OBJECTID)
        out += value.binary
    elif t is str:
        out.append(T_STRING)
        out += _string_body(value)
    elif t is int or t is Int64 or t is float or t is Decimal128:
        out.append(T_NUMBER)
        out += number_body(value)
    elif t is bool:
        out.append(T_BOOL)
        out.append(1 if value else 0)
    elif value is None:
        out.append(T_NULL)
    elif isinstance(value, dict):
        out.append(T_OBJECT)
        _object_body(value, out)
    elif isinstance(value, list | tuple):
        out.append(T_ARRAY)
        for item in value:
            _elements(item, out)
        out.append(0)
    elif isinstance(value, bson.Binary):  # before bytes: Binary subclasses bytes
        out.append(T_BINARY)
        out += struct.pack(">IB", len(value), value.subtype) + bytes(value)
    elif isinstance(value, bytes):  # binData subtype 0 as decoded by default
        out.append(T_BINARY)
        out += struct.pack(">IB", len(value), 0) + value
    elif t is DatetimeMS:
        out.append(T_DATE)
        out += struct.pack(">Q", int(value) + _MS_OFFSET)
    elif isinstance(value, datetime.datetime):
        out.append(T_DATE)
        out += struct.pack(">Q", datetime_to_ms(value) + _MS_OFFSET)
    elif t is Timestamp:
        out.append(T_TIMESTAMP)
        out += struct.pack(">II", value.time, value.inc)
    elif t is MinKey:
        out.append(T_MINKEY)
    elif t is MaxKey:
        out.append(T_MAXKEY)
    elif t is Regex:
        out.append(T_REGEX)
        flags = value.flags if isinstance(value.flags, str) else _flags_text(value.flags)
        out += _cstring(str(value.pattern)) + _cstring(flags)
    elif t is Code:
        if value.scope is None:
            out.append(T_CODE)
            out += _string_body(str(value))
        else:
            out.append(T_CODE_W_SCOPE)
            out += _string_body(str(value))
            _object_body(value.scope, out)
    elif t is DBRef:
        out.append(T_OBJECT)
        _object_body(value.as_doc(), out)
    else:
        raise MappingError(f"cannot encode a key from a value of type {t.__name__}")


def _object_body(doc: Any, out: bytearray) -> None:
    for name, item in doc.items():
        start = len(out)
        _elements(item, out)
        # MongoDB compares type, then field name, then value: put the name after the
        # type byte and before the body.
        out[start + 1 : start + 1] = _cstring(name)
    out.append(0)


def _flags_text(flags: int) -> str:
    import re

    letters = []
    for flag, letter in ((re.IGNORECASE, "i"), (re.LOCALE, "l"), (re.MULTILINE, "m"),
                         (re.DOTALL, "s"), (re.UNICODE, "u"), (re.VERBOSE, "x")):
        if flags & flag:
            letters.append(letter)
    return "".join(letters)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def datetime_to_ms(value: datetime.datetime) -> int:
    """Milliseconds since the epoch of a datetime (naive means UTC, as in pymongo)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def encode_key_value(value: Any) -> bytes:
    """The ``_key`` bytes of an ``_id`` value (also usable for range bounds).

    ``MinKey()``/``MaxKey()`` give the lowest/highest possible keys of their rank, so
    ``encode_key_value(MinKey())`` is below and ``encode_key_value(MaxKey())`` above the
    key of every real ``_id``.
    """
    if type(value) is ObjectId:  # the common case, kept short
        return b"\x23" + value.binary
    out = bytearray()
    _elements(value, out)
    return bytes(out)


# --- raw BSON helpers -------------------------------------------------------------------

_FIXED_SIZES = {
    0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
    0x13: 16, 0x7F: 0, 0xFF: 0,
}
_INT32 = struct.Struct("<i")


def bson_value_size(raw: bytes, pos: int, btype: int) -> int:
    """Size in bytes of the value of type ``btype`` starting at ``raw[pos]``."""
    fixed = _FIXED_SIZES.get(btype)
    if fixed is not None:
        return fixed
    if btype in (0x02, 0x0D, 0x0E):  # string, code, symbol
        return 4 + int(_INT32.unpack_from(raw, pos)[0])
    if btype in (0x03, 0x04, 0x0F):  # document, array, code w/ scope
        return int(_INT32.unpack_from(raw, pos)[0])
    if btype == 0x05:
        return 5 + int(_INT32.unpack_from(raw, pos)[0])
    if btype == 0x0B:  # regex: two cstrings
        end = raw.index(b"\x00", raw.index(b"\x00", pos) + 1)
        return end + 1 - pos
    if btype == 0x0C:  # DBPointer: string + ObjectId
        return 4 + int(_INT32.unpack_from(raw, pos)[0]) + 12
    raise MappingError(f"unknown BSON type 0x{btype:02x}")


_FIRST_ID_SIZES = {t: 5 + n for t, n in _FIXED_SIZES.items() if n}
"""Element size (type byte, ``_id\\0``, value) of a fixed-size ``_id`` value type."""
_FIRST_ID_HEADERS = {n: struct.pack("<i", n + 5) for n in set(_FIRST_ID_SIZES.values())}


def id_bson_from_raw(raw: bytes) -> bytes:
    """The BSON document ``{"_id": value}`` cut out of a raw document, byte for byte.

    Keeps the exact original type (int32 vs int64, symbol, DBPointer…) without decoding.
    """
    if raw[5:9] == b"_id\x00":  # _id first, as MongoDB stores it
        size = _FIRST_ID_SIZES.get(raw[4])
        if size is not None and len(raw) > size + 4:  # ObjectId, int32, int64, double…
            if len(raw) == size + 5 and raw[:4] == _FIRST_ID_HEADERS[size] and raw[-1] == 0:
                return raw  # it is {"_id": value} already (a documentKey, unsharded)
            return _FIRST_ID_HEADERS[size] + raw[4:size + 4] + b"\x00"
    try:
        pos = 4
        end = len(raw) - 1
        while pos < end:
            btype = raw[pos]
            name_end = raw.index(b"\x00", pos + 1)
            size = bson_value_size(raw, name_end + 1, btype)
            if raw[pos + 1 : name_end] == b"_id":
                element = raw[pos : name_end + 1 + size]
                return struct.pack("<i", len(element) + 5) + element + b"\x00"
            pos = name_end + 1 + size
    except (ValueError, IndexError, struct.error) as exc:
        raise MappingError("malformed BSON document") from exc
    raise MappingError("document has no _id")
