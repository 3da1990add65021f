"""Column mode: typed columns from dotted paths, child tables for arrays, a jsonb rest.

The root row is ``_key, _id, _id_bson`` (see :mod:`cdc.mapping.document`), then one
typed column per configured path, then the rest column: the document minus ``_id`` and
minus everything lifted, as Extended JSON, so nothing is dropped. Lifting removes a
value from its parent sub-document; the parent stays in the rest (possibly empty), so
the reverse mapping can put the value back where it was.

Rules that keep the reverse mapping exact:

* a path that is absent, or runs through a non-document, gives ``NULL`` and lifts
  nothing; an explicit ``null`` is *not* lifted (it stays in the rest), so ``NULL`` in a
  typed column always means "absent";
* a value of a type the column cannot hold raises :class:`MappingError` (see
  :mod:`cdc.mapping.convert`);
* a child table lifts a *non-empty array*: one row per element — ``_key`` (the parent's
  key), ``_ord`` (position from 0), the element's typed columns, and the element's rest
  (a sub-document minus its lifted fields, or the whole element when it is not a
  sub-document). An empty array or a non-array stays in the parent's rest.

``copy_rows`` writes the same rows for a whole batch as binary COPY streams, in C
(:mod:`cdc.mapping.copyrows`), for the column types the C code converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc.errors import ConfigError, MappingError
from cdc.mapping.config import ColumnRule, MappingRule
from cdc.mapping.convert import Backward, Forward, converters, pg_type
from cdc.mapping.copyrows import Spec, column_spec, copy_rows
from cdc.mapping.document import KEY, KEY_COLUMNS, RESERVED, decode_id, id_key, key_parts
from cdc.mapping.ejson import canonical_json, decode, from_ejson, needs_walker, relaxed_json_part
from cdc.mapping.model import Column, CopyRows, MappedDocument, TableShape
from cdc.mapping.names import check_unique, pg_identifier

PARENT_KEY = Column("_key", "bytea")
ORDINAL = Column("_ord", "integer")


class _Lift:
    """One typed column: where it comes from and how it converts."""

    __slots__ = ("back", "forward", "leaf", "mapping_type", "parents", "path")

    def __init__(self, rule: ColumnRule, canonical: bool) -> None:
        self.path = rule.path
        self.mapping_type = rule.type
        parts = rule.path.split(".")
        self.parents = tuple(parts[:-1])
        self.leaf = parts[-1]
        self.forward: Forward
        self.back: Backward
        self.forward, self.back = converters(rule.type, canonical)

    def take(self, doc: dict[str, Any]) -> Any:
        """Remove the value from ``doc`` and return it converted; None if absent/null."""
        parent: Any = doc
        for part in self.parents:
            parent = parent.get(part)
            if type(parent) is not dict:
                return None
        value = parent.get(self.leaf)
        if value is None:
            return None
        try:
            converted = self.forward(value)
        except MappingError as exc:
            raise MappingError(f"{self.path}: {exc}") from exc
        del parent[self.leaf]
        return converted

    def put(self, doc: dict[str, Any], value: Any) -> None:
        if value is None:
            return
        parent = doc
        for part in self.parents:
            parent = parent.setdefault(part, {})
            if type(parent) is not dict:
                raise MappingError(f"{self.path}: the rest holds a non-document on the path")
        parent[self.leaf] = self.back(value)


def _columns(rules: tuple[ColumnRule, ...], where: str, taken: list[tuple[str, str]]
             ) -> list[Column]:
    out = []
    for i, rule in enumerate(rules):
        name = pg_identifier(rule.column_name())
        taken.append((f"{where}.columns[{i}] ({rule.path})", name))
        out.append(Column(name, pg_type(rule.type), rule.path))
    return out


def _check_paths(paths: list[tuple[str, str]]) -> None:
    """No path may be a prefix of another: a value would be lifted twice."""
    for key, path in paths:
        for other_key, other in paths:
            if key != other_key and (other == path or other.startswith(path + ".")):
                raise ConfigError(f"paths {path!r} and {other!r} overlap", key=other_key)


class _Child:
    __slots__ = ("leaf", "lifts", "parents", "path", "shape")

    def __init__(self, path: str, shape: TableShape, lifts: list[_Lift]) -> None:
        self.path = path
        parts = path.split(".")
        self.parents = tuple(parts[:-1])
        self.leaf = parts[-1]
        self.shape = shape
        self.lifts = lifts


class ColumnMapper:
    """Mapper for column mode (implements :class:`cdc.mapping.model.Mapper`)."""

    def __init__(self, root: TableShape, lifts: list[_Lift], children: list[_Child],
                 canonical: bool) -> None:
        self._root = root
        self._lifts = lifts
        self._children = children
        self._canonical = canonical
        self._copy_spec: Spec | None = None if canonical else column_spec(
            [(lift.path, lift.mapping_type) for lift in lifts],
            [(c.path, [(lift.path, lift.mapping_type) for lift in c.lifts])
             for c in children])

    @classmethod
    def build(cls, rule: MappingRule, schema: str, table: str, *, canonical: bool,
              where: str, db: str, coll: str) -> ColumnMapper:
        rest = pg_identifier(rule.rest_column)
        taken = [(f"reserved column {c}", c) for c in sorted(RESERVED)]
        typed = _columns(rule.columns, where, taken)
        taken.append((f"{where}.rest_column", rest))
        check_unique(taken, key=f"{where}.columns", what="columns")
        paths = [(f"{where}.columns[{i}].path", c.path) for i, c in enumerate(rule.columns)]
        paths += [(f"{where}.children[{i}].path", c.path) for i, c in enumerate(rule.children)]
        _check_paths(paths)
        root = TableShape(schema, table, (*KEY_COLUMNS, *typed, Column(rest, "jsonb")),
                          (KEY.name,))
        children = []
        for ci, child in enumerate(rule.children):
            cwhere = f"{where}.children[{ci}]"
            try:
                ctable = pg_identifier(child.table.format(db=db, coll=coll))
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError("bad placeholder (use {db}/{coll})",
                                  key=f"{cwhere}.table") from exc
            ctaken = [(f"reserved column {c}", c) for c in ("_key", "_ord", "_m2p_version")]
            ccols = _columns(child.columns, cwhere, ctaken)
            ctaken.append((f"{where}.rest_column", rest))
            check_unique(ctaken, key=f"{cwhere}.columns", what="columns")
            _check_paths([(f"{cwhere}.columns[{i}].path", c.path)
                          for i, c in enumerate(child.columns)])
            shape = TableShape(schema, ctable, (PARENT_KEY, ORDINAL, *ccols,
                                                Column(rest, "jsonb")),
                               (PARENT_KEY.name, ORDINAL.name), parent=table)
            children.append(_Child(child.path, shape,
                                   [_Lift(c, canonical) for c in child.columns]))
        check_unique([(f"{where}.table", table)]
                     + [(f"{where}.children[{i}].table", c.shape.name)
                        for i, c in enumerate(children)], key=f"{where}.children",
                     what="tables")
        return cls(root, [_Lift(c, canonical) for c in rule.columns], children, canonical)

    def tables(self) -> tuple[TableShape, ...]:
        return (self._root, *(c.shape for c in self._children))

    def map_key(self, id_bson: bytes) -> bytes:
        return id_key(id_bson)

    def _json(self, value: Any, walker: bool) -> str:
        data = canonical_json(value) if self._canonical else relaxed_json_part(value, walker)
        return data.decode()

    def map_document(self, raw: bytes) -> MappedDocument:
        doc = decode(raw)
        key, id_text, id_bson = key_parts(doc, raw)
        del doc["_id"]
        walker = not self._canonical and needs_walker(raw)
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for child in self._children:
            rows[child.shape.name] = self._child_rows(child, doc, key, walker)
        values = [lift.take(doc) for lift in self._lifts]
        rows[self._root.name] = [(key, id_text, id_bson, *values, self._json(doc, walker))]
        return MappedDocument(key, rows)

    def _child_rows(self, child: _Child, doc: dict[str, Any], key: bytes, walker: bool
                    ) -> list[tuple[Any, ...]]:
        parent: Any = doc
        for part in child.parents:
            parent = parent.get(part)
            if type(parent) is not dict:
                return []
        array = parent.get(child.leaf)
        if type(array) is not list or not array:
            return []
        out = []
        for ordinal, element in enumerate(array):
            if type(element) is dict:
                try:
                    values = [lift.take(element) for lift in child.lifts]
                except MappingError as exc:
                    raise MappingError(f"{child.path}.{ordinal}.{exc}") from exc
            else:
                values = [None] * len(child.lifts)
            out.append((key, ordinal, *values, self._json(element, walker)))
        del parent[child.leaf]
        return out

    def copy_rows(self, raws: Sequence[bytes], versions: Sequence[int],
                  streams: Sequence[bool] | None = None,
                  positions: Sequence[int] | None = None) -> CopyRows | None:
        """Binary COPY streams of a batch (see :mod:`cdc.mapping.copyrows`); None when
        this mapping has no fast path (canonical, numeric or jsonb columns…)."""
        return copy_rows(self._copy_spec, raws, versions, streams, positions)

    def to_document(self, rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
        """The document back from its rows (values ``bson.encode`` writes exactly)."""
        try:
            (row,) = rows[self._root.name]
        except (KeyError, ValueError) as exc:
            raise MappingError("column mode needs exactly one root row") from exc
        rest = from_ejson(row[-1])
        if not isinstance(rest, dict):
            raise MappingError("rest column does not hold a JSON object")
        doc: dict[str, Any] = {"_id": decode_id(row[2]), **rest}
        for lift, value in zip(self._lifts, row[3:-1], strict=True):
            lift.put(doc, value)
        for child in self._children:
            child_rows = sorted(rows.get(child.shape.name, ()), key=lambda r: int(r[1]))
            if not child_rows:
                continue
            array = []
            for crow in child_rows:
                element = from_ejson(crow[-1])
                if isinstance(element, dict):
                    for lift, value in zip(child.lifts, crow[2:-1], strict=True):
                        lift.put(element, value)
                array.append(element)
            parent = doc
            for part in child.parents:
                parent = parent.setdefault(part, {})
            parent[child.leaf] = array
        return doc
