"""BSON values ⇄ MongoDB Extended JSON v2 text, fast, for ``jsonb`` columns.

Forward, relaxed mode (the default) takes a fast path: the raw document is decoded once
by bson's C decoder (dates as :class:`DatetimeMS`, so out-of-range dates survive, and
binData subtype 0 as :class:`Binary`, so bytes are never mistaken for a string), then
``msgspec.json.encode`` writes JSON with :func:`_enc_hook` turning the non-JSON types
into their Extended JSON wrappers (``{"$oid": …}``, ``{"$date": …}``…). msgspec cannot
hook plain floats and writes NaN/±Infinity as ``null``; so a cheap scan of the *raw*
bytes looks for anything the fast path would get wrong — a non-finite or negative-zero
double, a field name starting with ``$`` — and sends such documents to the exact walker
(:func:`to_ejson`); a scan of the JSON output does the same for a possible U+0000 or a
number written in exponent form. A string containing U+0000 (PostgreSQL's text and
jsonb reject it) raises :class:`MappingError`; nothing is ever silently changed.

Document mode goes faster still: the C extension :mod:`cdc.mapping._fastejson` writes the
same relaxed text straight from the raw bytes (:func:`fast_relaxed`), without decoding;
for the rare documents it leaves alone (see its source) this Python path writes them.

Canonical mode always uses the walker (every number wrapped with its type), and is the
flavour that round-trips exactly. :func:`from_ejson` parses both flavours back into the
Python values ``bson.encode`` writes as the original BSON types.

Deviations from the Extended JSON spec, all to survive PostgreSQL's ``jsonb``, which
stores numbers as ``numeric``: a negative zero double and a double of magnitude >= 1e16
(which JSON writes as ``1e16`` and jsonb would turn into an integer) are written as
``{"$numberDouble": "…"}`` in relaxed mode too; and a sub-document whose keys are
exactly those of a type wrapper :func:`from_ejson` reads (``{"$oid": "x"}``) cannot be
told from the wrapper, so it raises :class:`MappingError` instead of being written
ambiguously.
"""

from __future__ import annotations

import base64
import datetime
import math
import re
from collections.abc import Callable
from typing import Any

import bson
import msgspec
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion, TypeDecoder, TypeRegistry
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
from cdc.mapping.keys import datetime_to_ms

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# 1970-01-01 .. 9999-12-31T23:59:59.999Z: dates relaxed mode writes as ISO-8601 text.
_ISO_MAX_MS = 253_402_300_799_999
_EPOCH = datetime.datetime(1970, 1, 1)


class _BytesAsBinary(TypeDecoder):
    """Decode binData subtype 0 as ``Binary`` (bson's default ``bytes`` would make
    msgspec write it as a base64 string, indistinguishable from a string)."""

    bson_type = bytes

    def transform_bson(self, value: Any) -> Any:
        return Binary(value, 0)


DECODE_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_MS,
    type_registry=TypeRegistry([_BytesAsBinary()]),
)
"""How the mapping decodes raw BSON: exact dates, binary kept binary, strict UTF-8."""


def decode(raw: bytes) -> dict[str, Any]:
    """Decode one raw BSON document (once); malformed input raises MappingError."""
    try:
        return bson.decode(raw, DECODE_OPTIONS)
    except Exception as exc:  # InvalidBSON, UnicodeDecodeError, struct errors…
        raise MappingError(f"cannot decode BSON document: {type(exc).__name__}") from exc


_REGEX_FLAGS = ((re.IGNORECASE, "i"), (re.LOCALE, "l"), (re.MULTILINE, "m"),
                (re.DOTALL, "s"), (re.UNICODE, "u"), (re.VERBOSE, "x"))


def regex_options(value: Regex[Any]) -> str:
    """Regex flags as sorted letters (the spec's order)."""
    flags = value.flags
    if isinstance(flags, str):
        return "".join(sorted(flags))
    return "".join(letter for flag, letter in _REGEX_FLAGS if flags & flag)


def date_relaxed(ms: int) -> Any:
    if 0 <= ms <= _ISO_MAX_MS:
        dt = _EPOCH + datetime.timedelta(milliseconds=ms)
        return {"$date": dt.isoformat(timespec="milliseconds") + "Z"}
    return {"$date": {"$numberLong": str(ms)}}


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _binary(value: Binary) -> Any:
    return {"$binary": {"base64": base64.b64encode(bytes(value)).decode("ascii"),
                        "subType": f"{value.subtype:02x}"}}


def _enc_hook(value: Any) -> Any:
    """msgspec's hook for non-JSON types in the relaxed fast path."""
    t = type(value)
    if t is Int64:
        return int(value)
    if t is ObjectId:
        return {"$oid": str(value)}
    if t is DatetimeMS:
        return date_relaxed(int(value))
    if t is Binary:
        return _binary(value)
    # Everything rarer goes through the walker, which knows every type.
    return to_ejson(value, canonical=False)


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)

FastRow = tuple[bytes | None, str | None, bytes, str]
"""``(_key, _id text, _id_bson, relaxed JSON)``; the first two None unless ``_id`` is an
ObjectId (see :func:`fast_relaxed`)."""

_relaxed_c: Callable[[bytes], FastRow | None] | None
try:
    from cdc.mapping._fastejson import relaxed as _relaxed_c
except ImportError:  # extension not built (e.g. a plain source checkout): Python path
    _relaxed_c = None


def fast_relaxed(raw: bytes) -> FastRow | None:
    """The document-mode row of a whole raw document, its relaxed Extended JSON written
    by the C extension and ``_id_bson`` cut out of ``raw`` (``_key`` and ``_id`` text too
    for an ObjectId ``_id``); None when the Python path must write it: a rare type or
    case the extension leaves alone, or malformed BSON, whose verdict
    (:class:`MappingError`) :func:`decode` then gives exactly as before."""
    if _relaxed_c is None:
        return None
    try:
        return _relaxed_c(raw)
    except ValueError:
        return None


_EXPONENT = re.compile(rb"e[1-9]")  # one pass; sre finds the literal 'e' fast
_NUMBER_CHARS = b"0123456789.-"
_VALUE_OPENERS = b":,["
_NEG_ZERO = b"\x00\x00\x00\x00\x00\x00\x00\x80"


def needs_walker(raw: bytes) -> bool:
    """Whether ``raw`` may hold what the fast path cannot write: a field name starting
    with '$' (a type byte, then '$'), a NaN/±Infinity double (exponent bits all set:
    little-endian bytes 6-7 are [f0-ff] then 7f or ff) or -0.0. Built from memchr-speed
    ``find`` calls; a false alarm only costs time."""
    # Scans start at 1: byte 0 (the document's length) has no byte before it, and
    # must not end the scan when it happens to equal the byte looked for.
    pos = raw.find(b"$", 1)
    while pos > 0:
        before = raw[pos - 1]
        if 0x01 <= before <= 0x13 or before in (0x7F, 0xFF):
            return True
        pos = raw.find(b"$", pos + 1)
    for high in (b"\x7f", b"\xff"):
        pos = raw.find(high, 1)
        while pos > 0:
            if raw[pos - 1] >= 0xF0:
                return True
            pos = raw.find(high, pos + 1)
    return _NEG_ZERO in raw


def relaxed_json(value: Any, raw: bytes) -> bytes:
    """Relaxed Extended JSON of ``value`` (decoded from ``raw`` with DECODE_OPTIONS, or a
    part of it: ``raw`` only serves to decide whether the fast path is safe)."""
    return relaxed_json_part(value, needs_walker(raw))


def relaxed_json_part(value: Any, walker: bool) -> bytes:
    """Relaxed Extended JSON of ``value``; ``walker`` is :func:`needs_walker` of the raw
    document ``value`` was decoded from (computed once per document)."""
    if walker:
        return msgspec.json.encode(to_ejson(value, canonical=False))
    out = _ENCODER.encode(value)
    # Let the walker decide on a possible U+0000 in a string, and on a possible double of
    # magnitude >= 1e16, which msgspec writes in exponent form ("1e16"): jsonb would turn
    # it into the integer 10000000000000000, read back as int64.
    if b"\\u0000" in out or _has_positive_exponent(out):
        return msgspec.json.encode(to_ejson(value, canonical=False))
    return out


def _has_positive_exponent(out: bytes) -> bool:
    """Whether msgspec's JSON holds a number like ``1e16``: 'e' and 1-9 after a token of
    digits that starts a value (after ':', ',', '[' or at the start). Hex text such as
    an ObjectId's ``"…5e1…"`` is no such token."""
    match = _EXPONENT.search(out)
    while match is not None:
        end = match.start() - 1
        start = end
        while start >= 0 and out[start] in _NUMBER_CHARS:
            start -= 1
        if start < end and (start < 0 or out[start] in _VALUE_OPENERS):
            return True
        match = _EXPONENT.search(out, match.start() + 1)
    return False


def canonical_json(doc: dict[str, Any]) -> bytes:
    """Canonical Extended JSON of ``doc``: every value keeps its exact BSON type."""
    return msgspec.json.encode(to_ejson(doc, canonical=True))


def _ejson_dict(doc: Any, canonical: bool) -> dict[str, Any]:
    out = {}
    dollar = False
    for key, item in doc.items():
        if key[:1] == "$":
            dollar = True
        out[key] = to_ejson(item, canonical)
    # Ambiguous exactly when from_ejson would read it as a type wrapper.
    if dollar and (frozenset(out) in _PARSERS or _looks_like_dbref(doc)):
        raise MappingError("a sub-document has the keys of an Extended JSON type wrapper")
    return out


def _looks_like_dbref(doc: Any) -> bool:
    # bson decodes such a sub-document as DBRef itself; one that reaches here as a plain
    # dict (e.g. a non-string $ref) would still be read back as DBRef by our parser.
    return "$ref" in doc and "$id" in doc and isinstance(doc.get("$ref"), str)


def to_ejson(value: Any, canonical: bool) -> Any:
    """The Extended JSON form of one BSON value as plain JSON data (dict/list/str…)."""
    t = type(value)
    if t is str:
        if "\x00" in value:
            raise MappingError("a string contains U+0000, which PostgreSQL cannot store")
        return value
    if t is dict:
        return _ejson_dict(value, canonical)
    if t is list:
        return [to_ejson(item, canonical) for item in value]
    if t is int:
        if canonical:
            if INT32_MIN <= value <= INT32_MAX:
                return {"$numberInt": str(value)}
            return {"$numberLong": str(value)}
        return value
    if t is Int64:
        return {"$numberLong": str(int(value))} if canonical else int(value)
    if t is float:
        if canonical or not -1e16 < value < 1e16 or (
                value == 0.0 and math.copysign(1, value) < 0):
            return {"$numberDouble": _float_text(value)}
        return value
    if t is bool or value is None:
        return value
    handler = _HANDLERS.get(t)
    if handler is not None:
        return handler(value, canonical)
    if isinstance(value, dict):  # SON and other mappings
        return _ejson_dict(value, canonical)
    if isinstance(value, bytes):
        return _binary(Binary(value, 0))
    if isinstance(value, datetime.datetime):
        ms = datetime_to_ms(value)
        return {"$date": {"$numberLong": str(ms)}} if canonical else date_relaxed(ms)
    raise MappingError(f"no Extended JSON form for a value of type {t.__name__}")


def _code(value: Code, canonical: bool) -> Any:
    if value.scope is None:
        return {"$code": str(value)}
    return {"$code": str(value), "$scope": _ejson_dict(value.scope, canonical)}


def _dbref(value: DBRef, canonical: bool) -> Any:
    out: dict[str, Any] = {"$ref": value.collection, "$id": to_ejson(value.id, canonical)}
    if value.database is not None:
        out["$db"] = value.database
    for key, item in value._DBRef__kwargs.items():
        out[key] = to_ejson(item, canonical)
    return out


_HANDLERS: dict[type, Callable[[Any, bool], Any]] = {
    ObjectId: lambda v, c: {"$oid": str(v)},
    Decimal128: lambda v, c: {"$numberDecimal": str(v)},
    Binary: lambda v, c: _binary(v),
    DatetimeMS: lambda v, c: (
        {"$date": {"$numberLong": str(int(v))}} if c else date_relaxed(int(v))
    ),
    Timestamp: lambda v, c: {"$timestamp": {"t": v.time, "i": v.inc}},
    Regex: lambda v, c: {"$regularExpression": {"pattern": str(v.pattern),
                                                "options": regex_options(v)}},
    Code: _code,
    DBRef: _dbref,
    MinKey: lambda v, c: {"$minKey": 1},
    MaxKey: lambda v, c: {"$maxKey": 1},
}


# --- reverse: Extended JSON → Python values bson.encode writes back exactly ------------


def _parse_date(body: Any) -> DatetimeMS:
    if isinstance(body, dict):
        return DatetimeMS(int(body["$numberLong"]))
    text = str(body)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(text)
    return DatetimeMS(datetime_to_ms(dt))


def _parse_double(text: str) -> float:
    return float({"Infinity": "inf", "-Infinity": "-inf"}.get(text, text))


def _regex(body: Any) -> Regex[Any]:
    return Regex(body["pattern"], body["options"])


_PARSERS: dict[frozenset[str], Callable[[dict[str, Any]], Any]] = {
    frozenset({"$oid"}): lambda d: ObjectId(d["$oid"]),
    frozenset({"$numberInt"}): lambda d: int(d["$numberInt"]),
    frozenset({"$numberLong"}): lambda d: Int64(int(d["$numberLong"])),
    frozenset({"$numberDouble"}): lambda d: _parse_double(d["$numberDouble"]),
    frozenset({"$numberDecimal"}): lambda d: Decimal128(d["$numberDecimal"]),
    frozenset({"$binary"}): lambda d: Binary(base64.b64decode(d["$binary"]["base64"]),
                                             int(d["$binary"]["subType"], 16)),
    frozenset({"$date"}): lambda d: _parse_date(d["$date"]),
    frozenset({"$timestamp"}): lambda d: Timestamp(d["$timestamp"]["t"], d["$timestamp"]["i"]),
    frozenset({"$regularExpression"}): lambda d: _regex(d["$regularExpression"]),
    frozenset({"$code"}): lambda d: Code(d["$code"]),
    frozenset({"$code", "$scope"}): lambda d: Code(d["$code"], _from(d["$scope"])),
    frozenset({"$minKey"}): lambda d: MinKey(),
    frozenset({"$maxKey"}): lambda d: MaxKey(),
}


def _from(value: Any) -> Any:
    t = type(value)
    if t is dict:
        if (value and next(iter(value))[:1] == "$") or "$ref" in value:
            parser = _PARSERS.get(frozenset(value))
            if parser is not None:
                try:
                    return parser(value)
                except (KeyError, TypeError, ValueError, bson.errors.InvalidId) as exc:
                    raise MappingError("malformed Extended JSON type wrapper") from exc
            if _looks_like_dbref(value):
                rest = {k: _from(v) for k, v in value.items() if k not in ("$ref", "$id", "$db")}
                return DBRef(value["$ref"], _from(value["$id"]), value.get("$db"), **rest)
        return {key: _from(item) for key, item in value.items()}
    if t is list:
        return [_from(item) for item in value]
    if t is int:
        if INT32_MIN <= value <= INT32_MAX:
            return value
        if INT64_MIN <= value <= INT64_MAX:
            return Int64(value)
        return float(value)  # only a double can be an integer this large
    return value


def from_ejson(text: str | bytes) -> Any:
    """Parse Extended JSON (relaxed or canonical) into values bson.encode writes back."""
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise MappingError("column does not hold valid JSON") from exc
    return _from(data)
