"""From the ``[mapping]`` config to one :class:`Mapper` per namespace, checked at startup.

:func:`rule_for` picks the rule of a namespace (exact ``db.coll`` first, then ``db.*``,
then the default document-mode rule); :func:`resolve` builds its Mapper, with every
identifier already shortened to 63 bytes (:func:`~cdc.mapping.names.pg_identifier`).
:func:`validate` builds the mappers of all known namespaces once and raises
:class:`~cdc.errors.ConfigError` (with the config key) for a malformed rule or when two
source names — namespaces, tables, columns — land on one identifier. A daemon calls it
at startup with the namespaces it found, and again for a namespace that appears later.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from cdc.errors import ConfigError
from cdc.mapping.config import ColumnRule, MappingConfig, MappingRule
from cdc.mapping.document import RESERVED, DocumentMapper
from cdc.mapping.model import ReversibleMapper
from cdc.mapping.names import pg_identifier
from cdc.types import Namespace


def _as_namespace(namespace: Namespace | str) -> Namespace:
    if isinstance(namespace, Namespace):
        return namespace
    try:
        return Namespace.parse(namespace)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def rule_index(config: MappingConfig, namespace: Namespace) -> int | None:
    """Index of the rule that applies to ``namespace`` (exact beats wildcard), or None."""
    wildcard = None
    for index, rule in enumerate(config.rules):
        if rule.namespace == str(namespace):
            return index
        if wildcard is None and rule.namespace == f"{namespace.db}.*":
            wildcard = index
    return wildcard


def rule_for(config: MappingConfig, namespace: Namespace | str) -> MappingRule:
    """The rule of ``namespace``; the default document-mode rule if none matches."""
    ns = _as_namespace(namespace)
    index = rule_index(config, ns)
    if index is None:
        return MappingRule(namespace=str(ns))
    return config.rules[index]


def _format(template: str, ns: Namespace, key: str) -> str:
    try:
        return template.format(db=ns.db, coll=ns.coll)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"bad placeholder in {template!r} (use {{db}}/{{coll}})",
                          key=key) from exc


@functools.lru_cache(maxsize=4096)
def resolve(config: MappingConfig, namespace: Namespace | str) -> ReversibleMapper:
    """The Mapper of one namespace (cached: the same config and namespace, one object)."""
    ns = _as_namespace(namespace)
    index = rule_index(config, ns)
    rule = config.rules[index] if index is not None else MappingRule(namespace=str(ns))
    where = f"mapping.rules[{index}]" if index is not None else "include"
    schema = pg_identifier(_format(rule.schema, ns, f"{where}.schema")
                           if rule.schema is not None else ns.db)
    table = pg_identifier(_format(rule.table, ns, f"{where}.table")
                          if rule.table is not None else ns.coll)
    canonical = (rule.json or config.json) == "canonical"
    if rule.mode == "document":
        if rule.columns or rule.children:
            raise ConfigError("document mode takes no columns or children (use mode = "
                              "\"column\")", key=f"{where}.mode")
        doc_column = pg_identifier(rule.doc_column)
        if doc_column in RESERVED:
            raise ConfigError(f"{doc_column!r} is a reserved column name",
                              key=f"{where}.doc_column")
        return DocumentMapper(schema, table, doc_column=doc_column, canonical=canonical)
    from cdc.mapping.columns import ColumnMapper

    return ColumnMapper.build(rule, schema, table, canonical=canonical, where=where,
                              db=ns.db, coll=ns.coll)


def _check_rule_shape(rule: MappingRule, where: str) -> None:
    db, sep, coll = rule.namespace.partition(".")
    if not sep or not db or not coll:
        raise ConfigError(f"namespace must look like 'db.coll' or 'db.*', got "
                          f"{rule.namespace!r}", key=f"{where}.namespace")
    if coll == "*" and rule.table is not None and "{coll}" not in rule.table:
        raise ConfigError("a wildcard rule's table must contain {coll}", key=f"{where}.table")
    paths: list[tuple[str, ColumnRule, str]] = [
        (f"{where}.columns[{i}]", c, c.path) for i, c in enumerate(rule.columns)
    ]
    for ci, child in enumerate(rule.children):
        paths.append((f"{where}.children[{ci}]", ColumnRule(child.path, "jsonb"), child.path))
        paths += [(f"{where}.children[{ci}].columns[{i}]", c, c.path)
                  for i, c in enumerate(child.columns)]
    for key, _column, path in paths:
        if not path or any(not part for part in path.split(".")):
            raise ConfigError(f"bad dotted path {path!r}", key=f"{key}.path")
        if path == "_id" or path.startswith("_id."):
            raise ConfigError("_id is mapped to the key columns already", key=f"{key}.path")


def validate(config: MappingConfig, namespaces: Iterable[Namespace | str] = ()) -> None:
    """Check the mapping config and the namespaces it will serve; raise ConfigError.

    Covers every exact-namespace rule plus ``namespaces`` (those the include list
    matched): malformed rules, duplicate patterns, column collisions inside a table and
    table collisions across namespaces (after shortening to 63 bytes).
    """
    patterns = [r.namespace for r in config.rules]
    for index, pattern in enumerate(patterns):
        if patterns.index(pattern) != index:
            raise ConfigError(f"two rules for {pattern!r}", key=f"mapping.rules[{index}]")
    for index, rule in enumerate(config.rules):
        _check_rule_shape(rule, f"mapping.rules[{index}]")
    all_ns = {_as_namespace(n) for n in namespaces}
    all_ns |= {Namespace.parse(r.namespace) for r in config.rules
               if not r.namespace.endswith(".*")}
    seen: dict[tuple[str, str], str] = {}
    for ns in sorted(all_ns):
        found = rule_index(config, ns)
        key = f"mapping.rules[{found}].table" if found is not None else "include"
        for shape in resolve(config, ns).tables():
            source = str(ns) if shape.parent is None else f"{ns} (child {shape.name})"
            other = seen.setdefault((shape.schema, shape.name), source)
            if other != source:
                raise ConfigError(f"{other} and {source} both map to table "
                                  f"{shape.qualified!r}", key=key)
