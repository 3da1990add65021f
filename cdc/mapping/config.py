"""The mapping section of the config file: which namespace becomes which table(s), how.

Rules are matched per namespace: an exact ``db.coll`` rule wins over a ``db.*`` rule; a
namespace matched by neither (only by the top-level ``include`` list) gets the default
rule — document mode into ``"<db>"."<coll>"``. ``table`` may use ``{db}`` and ``{coll}``
placeholders (a wildcard rule needs ``{coll}`` in it, or every collection would share
one table). :func:`validate` checks a whole config at startup and raises
:class:`~cdc.errors.ConfigError` naming the offending key (``mapping.rules[1].columns
[0].name``), in particular when two source names land on one PostgreSQL identifier.
"""

from __future__ import annotations

from typing import Literal

import msgspec

ColumnType = Literal[
    "text", "bigint", "integer", "double precision", "numeric", "boolean", "timestamptz",
    "uuid", "bytea", "jsonb", "objectid",
]
JsonFlavour = Literal["relaxed", "canonical"]


class ColumnRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One typed column lifted out of the document."""

    path: str
    """Dotted path through sub-documents, e.g. ``customer.address.city``."""
    type: ColumnType
    """PostgreSQL type (or ``objectid``: a text column of 24 hex digits that comes back
    as ObjectId); see the README's conversion table for what each one accepts."""
    name: str | None = None
    """Column name; defaults to the path with dots replaced by underscores."""

    def column_name(self) -> str:
        return self.name if self.name is not None else self.path.replace(".", "_")


class ChildRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An array of sub-documents lifted into its own table, one row per element."""

    path: str
    """Dotted path of the array in the parent document."""
    table: str
    """Child table name (``{db}``/``{coll}`` placeholders allowed), in the parent's schema."""
    columns: tuple[ColumnRule, ...] = ()
    """Typed columns lifted out of each element; the rest of it goes to ``_rest``."""


class MappingRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the collections matching ``namespace`` become tables."""

    namespace: str
    """``db.coll`` or ``db.*``."""
    schema: str | None = None
    """Target schema; default: the database name."""
    table: str | None = None
    """Target table; default: the collection name (``{db}``/``{coll}`` allowed)."""
    mode: Literal["document", "column"] = "document"
    """``document``: key columns + one jsonb column with the whole document.
    ``column``: key columns + typed ``columns`` + a jsonb ``rest`` column with the rest."""
    columns: tuple[ColumnRule, ...] = ()
    children: tuple[ChildRule, ...] = ()
    json: JsonFlavour | None = None
    """Extended JSON flavour of jsonb values; default: the section's ``json``."""
    doc_column: str = "doc"
    """Name of the jsonb column holding the document (document mode)."""
    rest_column: str = "_rest"
    """Name of the jsonb column holding what no typed column took (column mode)."""


class MappingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[mapping]`` section."""

    json: JsonFlavour = "relaxed"
    """``relaxed`` (readable, default) or ``canonical`` (every value keeps its type)."""
    rules: tuple[MappingRule, ...] = ()
