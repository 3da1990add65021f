"""Document → row mapping: pure, synchronous functions shared by CDC, backfill and verify.

One :class:`~cdc.mapping.model.Mapper` per namespace turns a raw BSON document into the
rows of its table(s) and back. :func:`resolve` builds it from the ``[mapping]`` config
(:mod:`cdc.mapping.config`): *document mode* (default) writes the ``_id`` key columns and
the whole document as one ``jsonb`` value; *column mode* lifts typed columns out of
dotted paths, arrays of sub-documents into child tables, and keeps everything else in a
``jsonb`` rest column, so nothing is dropped. The same functions run in CDC, backfill and
verify, so verification compares exactly what was written.

The root table's primary key ``_key`` is an order-preserving encoding of ``_id``
(:mod:`cdc.mapping.keys`): PostgreSQL's ``bytea`` order equals MongoDB's ``_id`` order, so
backfill chunks and verifier ranges translate directly. jsonb holds MongoDB Extended
JSON v2 (:mod:`cdc.mapping.ejson`). Every failure to convert a value raises
:class:`~cdc.errors.MappingError` (the document goes to the dead-letter table); config
mistakes — including two names landing on one identifier — raise
:class:`~cdc.errors.ConfigError` at startup (:func:`validate`).
"""

from cdc.mapping.config import ChildRule, ColumnRule, MappingConfig, MappingRule
from cdc.mapping.keys import encode_key_value
from cdc.mapping.model import Column, MappedDocument, Mapper, ReversibleMapper, TableShape
from cdc.mapping.resolve import resolve, rule_for, validate

__all__ = [
    "ChildRule",
    "Column",
    "ColumnRule",
    "MappedDocument",
    "Mapper",
    "MappingConfig",
    "MappingRule",
    "ReversibleMapper",
    "TableShape",
    "encode_key_value",
    "resolve",
    "rule_for",
    "validate",
]
