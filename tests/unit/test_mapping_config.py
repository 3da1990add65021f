"""Mapping config: rule matching, identifiers, and the startup validator."""

from __future__ import annotations

import msgspec
import pytest

from cdc.errors import ConfigError
from cdc.mapping import ChildRule, ColumnRule, MappingConfig, MappingRule, resolve, validate
from cdc.mapping.names import MAX_IDENTIFIER_BYTES, pg_identifier
from cdc.types import Namespace


def test_exact_rule_beats_wildcard_and_unmatched_namespace_gets_document_default() -> None:
    config = MappingConfig(rules=(
        MappingRule("shop.*", schema="s_{db}", table="w_{coll}"),
        MappingRule("shop.orders", table="orders_exact"),
    ))
    assert resolve(config, "shop.orders").tables()[0].qualified == "shop.orders_exact"
    assert resolve(config, "shop.users").tables()[0].qualified == "s_shop.w_users"
    assert resolve(config, Namespace("crm", "x.y")).tables()[0].qualified == "crm.x.y"


def test_resolve_returns_one_mapper_per_config_and_namespace() -> None:
    config = MappingConfig()
    assert resolve(config, "a.b") is resolve(config, "a.b")


def test_long_names_are_shortened_deterministically_with_a_hash_suffix() -> None:
    long_a = "c" * 70 + "a"
    long_b = "c" * 70 + "b"
    a, b = pg_identifier(long_a), pg_identifier(long_b)
    assert a == pg_identifier(long_a) and a != b
    assert len(a.encode()) <= MAX_IDENTIFIER_BYTES and a.startswith("c" * 54)
    multibyte = pg_identifier("é" * 40)  # 80 bytes: cut on a character boundary
    assert len(multibyte.encode()) <= MAX_IDENTIFIER_BYTES
    assert pg_identifier("Mixed Case-and.dots") == "Mixed Case-and.dots"
    table = resolve(MappingConfig(), f"db.{long_a}").tables()[0]
    assert table.name == a


def _config_error(config: MappingConfig, namespaces: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(config, namespaces or [])
    return info.value


def test_two_namespaces_on_one_table_is_a_config_error_naming_the_rule() -> None:
    config = MappingConfig(rules=(MappingRule("a.x", schema="s", table="t"),
                                  MappingRule("b.y", schema="s", table="t")))
    assert _config_error(config).key == "mapping.rules[1].table"


def test_wildcard_collision_found_among_discovered_namespaces() -> None:
    config = MappingConfig(rules=(MappingRule("a.*", schema="s", table="{coll}"),
                                  MappingRule("b.*", schema="s", table="{coll}")))
    validate(config, ["a.x", "b.y"])
    assert _config_error(config, ["a.x", "b.x"]).key == "mapping.rules[1].table"


def test_child_table_colliding_with_a_root_table_is_a_config_error() -> None:
    config = MappingConfig(rules=(
        MappingRule("a.x", mode="column", children=(ChildRule("items", "y"),)),))
    validate(config, ["a.z"])
    with pytest.raises(ConfigError):
        validate(config, ["a.y"])


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        (MappingRule("a.x", mode="column", columns=(ColumnRule("p", "text", "v"),
                                                    ColumnRule("q", "text", "v"))),
         "mapping.rules[0].columns"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("a.b", "text"),
                                                    ColumnRule("a_b", "text"))),
         "mapping.rules[0].columns"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("p", "text", "_id"),)),
         "mapping.rules[0].columns"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("p", "text", "_rest"),)),
         "mapping.rules[0].columns"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("a", "jsonb"),
                                                    ColumnRule("a.b", "text"))),
         "mapping.rules[0].columns[1].path"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("items.sku", "text"),),
                     children=(ChildRule("items", "it"),)),
         "mapping.rules[0].columns[0].path"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("a..b", "text"),)),
         "mapping.rules[0].columns[0].path"),
        (MappingRule("a.x", mode="column", columns=(ColumnRule("_id", "text"),)),
         "mapping.rules[0].columns[0].path"),
        (MappingRule("a.x", mode="column", children=(ChildRule("i", "x"),)),
         "mapping.rules[0].children"),
        (MappingRule("a.x", columns=(ColumnRule("p", "text"),)), "mapping.rules[0].mode"),
        (MappingRule("a.x", doc_column="_key"), "mapping.rules[0].doc_column"),
        (MappingRule("a.*", table="fixed"), "mapping.rules[0].table"),
        (MappingRule("ax"), "mapping.rules[0].namespace"),
        (MappingRule("a.x", table="{nope}"), "mapping.rules[0].table"),
    ],
)
def test_bad_rule_is_a_config_error_naming_its_key(rule: MappingRule, key: str) -> None:
    error = _config_error(MappingConfig(rules=(rule,)))
    assert error.key is not None and error.key.startswith(key)


def test_two_rules_for_one_pattern_is_a_config_error() -> None:
    config = MappingConfig(rules=(MappingRule("a.x"), MappingRule("a.x", table="t")))
    assert _config_error(config).key == "mapping.rules[1]"


def test_shortened_names_that_collide_are_reported() -> None:
    long_name = "n" * 80
    config = MappingConfig(rules=(MappingRule(
        "a.x", mode="column", columns=(ColumnRule("p", "text", long_name),
                                       ColumnRule("q", "text", pg_identifier(long_name)))),))
    assert _config_error(config).key == "mapping.rules[0].columns"


def test_config_decodes_from_toml_shaped_data_and_rejects_unknown_keys() -> None:
    data = {"json": "canonical", "rules": [{
        "namespace": "shop.orders", "mode": "column",
        "columns": [{"path": "customer.email", "type": "text", "name": "email"}],
        "children": [{"path": "items", "table": "order_items",
                      "columns": [{"path": "sku", "type": "text"}]}]}]}
    config = msgspec.convert(data, MappingConfig)
    validate(config)
    assert [t.name for t in resolve(config, "shop.orders").tables()] == ["orders",
                                                                         "order_items"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"rules": [{"namespace": "a.b", "colums": []}]}, MappingConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"rules": [{"namespace": "a.b", "mode": "columns"}]}, MappingConfig)


def test_config_file_mapping_section_is_decoded_and_validated() -> None:
    import tomllib

    from ops.config import decode_config

    text = """
include = ["shop.orders", "shop.users"]

[mapping]
json = "relaxed"

[[mapping.rules]]
namespace = "shop.orders"
mode = "column"
columns = [{ path = "status", type = "text" }, { path = "total", type = "numeric" }]

[[mapping.rules.children]]
path = "items"
table = "order_items"
columns = [{ path = "sku", type = "text" }, { path = "qty", type = "integer" }]
"""
    config = decode_config(tomllib.loads(text), source="m.toml")
    assert [t.name for t in resolve(config.mapping, "shop.orders").tables()] == [
        "orders", "order_items"]
    clash = text.replace('table = "order_items"', 'table = "users"')
    with pytest.raises(ConfigError) as info:
        decode_config(tomllib.loads(clash), source="m.toml")
    assert info.value.source == "m.toml" and info.value.key == "include"
    with pytest.raises(ConfigError) as info:
        decode_config(tomllib.loads(text.replace("path = \"sku\"", "pth = \"sku\"")),
                      source="m.toml")
    assert info.value.key is not None and info.value.key.startswith("mapping.rules")
