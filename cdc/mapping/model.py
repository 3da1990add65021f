"""The shapes the mapping hands to the sink (the contract between the two).

A :class:`TableShape` describes one target table the mapping produces; a
:class:`MappedDocument` holds, for one document, the rows of every table of its
namespace. The sink adds its own bookkeeping (the ``_m2p_version`` column, tombstones)
and never interprets row values: it COPYs them in column order.

Row values are Python objects asyncpg encodes in binary COPY for the column's type:
``bytes`` for ``bytea``, ``str`` for ``text`` and for ``jsonb`` (JSON text), ``int``
for ``bigint``, ``float`` for ``double precision``, ``decimal.Decimal`` for ``numeric``,
``datetime`` for ``timestamptz``, ``bool``, ``uuid.UUID`` — or ``None``.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class Column(msgspec.Struct, frozen=True):
    name: str
    """Final PostgreSQL identifier (already shortened to 63 bytes if needed)."""
    pg_type: str
    """PostgreSQL type name as written in DDL: ``bytea``, ``text``, ``jsonb``, ``bigint``…"""
    source_path: str | None = None
    """Dotted MongoDB path the column holds; ``None`` for key/ordinal/rest columns."""


class TableShape(msgspec.Struct, frozen=True):
    schema: str
    name: str
    columns: tuple[Column, ...]
    """Every data column in row order; the key columns come first."""
    key_columns: tuple[str, ...]
    """Primary key. Root tables: the ``_id`` key; child tables: parent key + ordinal."""
    parent: str | None = None
    """For a child table, the name of its root table (rows follow the parent document)."""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


class MappedDocument(msgspec.Struct, frozen=True):
    key: bytes
    """The order-preserving encoding of ``_id``: the root table's primary key."""
    rows: dict[str, list[tuple[Any, ...]]]
    """Rows per table (keyed by :attr:`TableShape.name`), values in column order.
    The root table has exactly one row; a child table may have none."""


class Mapper(Protocol):
    """The mapping of one namespace (what the sink, CDC, backfill and verify call)."""

    def tables(self) -> tuple[TableShape, ...]:
        """The root table first, then child tables."""
        ...

    def map_key(self, id_bson: bytes) -> bytes:
        """Key of the root table for the BSON document ``{"_id": value}``."""
        ...

    def map_document(self, raw: bytes) -> MappedDocument:
        """Rows of one raw BSON document; raises :class:`cdc.errors.MappingError`."""
        ...


class ReversibleMapper(Mapper, Protocol):
    """A Mapper that can also turn its rows back into the document (reverse replication)."""

    def to_document(self, rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
        """The document of ``rows`` (as :attr:`MappedDocument.rows`, values as asyncpg
        returns them, jsonb as text); values are those ``bson.encode`` writes back as the
        original BSON types. Raises :class:`cdc.errors.MappingError`."""
        ...


class CopyRows(msgspec.Struct, frozen=True):
    """A batch of documents as complete PostgreSQL binary COPY streams (``copy_rows``).

    Each stream is ``PGCOPY\\n\\377\\r\\n\\0``, flags and extension length 0, the tuples,
    and the trailer; a tuple holds the fields ``map_document`` gives, in column order,
    then ``_m2p_version bigint`` and, on root rows of the staging form,
    ``_m2p_stream boolean`` and ``_m2p_seq integer``.
    """

    root: bytes
    """The root table's stream: one tuple per written document, in input order."""
    children: tuple[bytes, ...]
    """One stream per child table, in ``tables()[1:]`` order (possibly no tuples)."""
    keys: list[bytes]
    """``_key`` of every written document, in input order."""
    left: list[int]
    """Indices of the documents written to no stream: the caller maps them with
    ``map_document`` (which may raise :class:`cdc.errors.MappingError`)."""
