"""Document mode: one row per document — the ``_id`` key columns and the document as jsonb.

Every root table (document and column mode) starts with the same three key columns:

* ``_key bytea`` — primary key, :func:`~cdc.mapping.keys.encode_key_value` of ``_id``
  (memcmp order == MongoDB's ``_id`` order, so ``_id`` ranges are ``_key`` ranges);
* ``_id text`` — ``_id`` for people: ObjectId as 24 hex digits, strings as themselves,
  integers in decimal, anything else as relaxed Extended JSON;
* ``_id_bson bytea`` — the BSON document ``{"_id": value}`` cut byte for byte out of the
  source document: the exact original type, for the reverse mapping and dead letters.

Document mode adds one ``jsonb`` column (``doc``) with the whole document, ``_id``
included, as Extended JSON (relaxed by default). In relaxed mode the hot path takes the
whole row from the C extension (:func:`cdc.mapping.ejson.fast_relaxed`), which writes the
text straight from the raw BSON and cuts ``_id_bson`` (and, for an ObjectId, ``_key``
and ``_id``) out of the raw ``_id`` element. Otherwise the raw BSON is decoded once and
encoded with msgspec (see :mod:`cdc.mapping.ejson`). For whole batches, ``copy_rows``
writes binary COPY streams in C (:mod:`cdc.mapping.copyrows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bson
import msgspec
from bson.int64 import Int64
from bson.objectid import ObjectId

from cdc.errors import MappingError
from cdc.mapping.copyrows import DOCUMENT_MODE, copy_rows
from cdc.mapping.ejson import (
    DECODE_OPTIONS,
    canonical_json,
    decode,
    fast_relaxed,
    relaxed_json,
    to_ejson,
)
from cdc.mapping.keys import encode_key_value, id_bson_from_raw
from cdc.mapping.model import Column, CopyRows, MappedDocument, TableShape

KEY = Column("_key", "bytea")
ID_TEXT = Column("_id", "text", "_id")
ID_BSON = Column("_id_bson", "bytea")
KEY_COLUMNS = (KEY, ID_TEXT, ID_BSON)
RESERVED = frozenset(c.name for c in KEY_COLUMNS) | {"_m2p_version"}


def render_id(value: Any) -> str:
    """``_id`` as readable text (not an identity: ``_key``/``_id_bson`` are)."""
    t = type(value)
    if t is ObjectId:
        return str(value)
    if t is str and "\x00" not in value:
        return str(value)
    if t is int or t is Int64:
        return str(int(value))
    if t is str:  # U+0000 cannot be stored in text: show it escaped, as JSON does
        return msgspec.json.encode(value).decode()
    return msgspec.json.encode(to_ejson(value, canonical=False)).decode()


def key_parts(doc: dict[str, Any], raw: bytes) -> tuple[bytes, str, bytes]:
    """``(_key, _id, _id_bson)`` of a decoded document and its raw bytes."""
    try:
        value = doc["_id"]
    except KeyError:
        raise MappingError("document has no _id") from None
    if type(value) is ObjectId and raw[4:9] == b"\x07_id\x00":
        # The common case, inlined: an ObjectId _id stored first.
        binary = value.binary
        return b"\x23" + binary, binary.hex(), b"\x16\x00\x00\x00" + raw[4:21] + b"\x00"
    return encode_key_value(value), render_id(value), id_bson_from_raw(raw)


def id_key(id_bson: bytes) -> bytes:
    """``_key`` of a BSON ``{"_id": value}`` document (an ObjectId without decoding)."""
    if len(id_bson) == 22 and id_bson[4:9] == b"\x07_id\x00":
        return b"\x23" + id_bson[9:21]
    return encode_key_value(decode_id(id_bson))


def decode_id(id_bson: bytes) -> Any:
    """The ``_id`` value of a BSON ``{"_id": value}`` document."""
    try:
        return bson.decode(id_bson, DECODE_OPTIONS)["_id"]
    except Exception as exc:
        raise MappingError("malformed _id document") from exc


class DocumentMapper:
    """Mapper for document mode (implements :class:`cdc.mapping.model.Mapper`)."""

    __slots__ = ("_canonical", "_doc_column", "_shape", "_table")

    def __init__(self, schema: str, table: str, *, doc_column: str = "doc",
                 canonical: bool = False) -> None:
        self._table = table
        self._doc_column = doc_column
        self._canonical = canonical
        self._shape = TableShape(
            schema=schema,
            name=table,
            columns=(*KEY_COLUMNS, Column(doc_column, "jsonb")),
            key_columns=(KEY.name,),
        )

    def tables(self) -> tuple[TableShape, ...]:
        return (self._shape,)

    def map_key(self, id_bson: bytes) -> bytes:
        return id_key(id_bson)

    def map_document(self, raw: bytes) -> MappedDocument:
        if not self._canonical:
            row = fast_relaxed(raw)
            if row is not None:
                key = row[0]
                if key is not None:  # an ObjectId _id: the row is complete
                    return MappedDocument(key, {self._table: [row]})
                value = decode_id(row[2])  # decode the _id alone
                key = encode_key_value(value)
                return MappedDocument(key, {self._table: [(key, render_id(value), *row[2:])]})
        doc = decode(raw)
        key, id_text, id_bson = key_parts(doc, raw)
        data = canonical_json(doc) if self._canonical else relaxed_json(doc, raw)
        return MappedDocument(key, {self._table: [(key, id_text, id_bson, data.decode())]})

    def copy_rows(self, raws: Sequence[bytes], versions: Sequence[int],
                  streams: Sequence[bool] | None = None,
                  positions: Sequence[int] | None = None) -> CopyRows | None:
        """Binary COPY streams of a batch (see :mod:`cdc.mapping.copyrows`); None in
        canonical mode or without the C extension."""
        if self._canonical:
            return None
        return copy_rows(DOCUMENT_MODE, raws, versions, streams, positions)

    def to_document(self, rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
        """The document back from its rows (values ``bson.encode`` writes exactly)."""
        from cdc.mapping.ejson import from_ejson

        try:
            (row,) = rows[self._table]
        except (KeyError, ValueError) as exc:
            raise MappingError("document mode needs exactly one root row") from exc
        body = from_ejson(row[3])
        if not isinstance(body, dict):
            raise MappingError("document column does not hold a JSON object")
        body.pop("_id", None)
        return {"_id": decode_id(row[2]), **body}
