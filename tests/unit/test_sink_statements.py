"""Shapes the sink accepts, and the layout of what it COPYs (no database)."""

from __future__ import annotations

import pytest

from cdc.errors import InvariantError
from cdc.mapping import Column, TableShape
from cdc.sink.ddl import check_shape, create_table_sql
from cdc.sink.statements import build

KEY = Column("_key", "bytea")
ROOT = TableShape("app", "orders", (KEY, Column("doc", "jsonb")), ("_key",))
CHILD = TableShape("app", "orders_items", (KEY, Column("_ord", "integer"),
                                           Column("sku", "text")), ("_key", "_ord"),
                   parent="orders")


def test_root_table_needs_exactly_one_listed_key_column() -> None:
    check_shape(ROOT)
    check_shape(CHILD)
    with pytest.raises(InvariantError):
        check_shape(TableShape("app", "t", (KEY, Column("b", "text")), ("_key", "b")))
    with pytest.raises(InvariantError):
        check_shape(TableShape("app", "t", (KEY,), ("missing",)))


def test_the_version_column_name_is_reserved() -> None:
    with pytest.raises(InvariantError):
        check_shape(TableShape("app", "t", (KEY, Column("_m2p_version", "bigint")),
                               ("_key",)))


def test_created_tables_carry_the_version_column_and_the_key() -> None:
    text = create_table_sql(CHILD).as_string(None)
    assert '"_m2p_version" bigint NOT NULL' in text
    assert 'PRIMARY KEY ("_key", "_ord")' in text
    assert text.startswith('CREATE TABLE IF NOT EXISTS "app"."orders_items"')


def test_staging_and_target_copy_layouts_follow_the_shapes() -> None:
    nsql = build(3, (ROOT, CHILD), "ctl")
    assert nsql.stage == "_m2p_s3"
    assert nsql.target_columns == ("_key", "doc", "_m2p_version")
    assert nsql.stage_columns == ("_key", "doc", "_m2p_version", "_m2p_stream", "_m2p_seq")
    (child,) = nsql.children
    assert child.columns == ("_key", "_ord", "sku", "_m2p_version")
    assert child.stage == "_m2p_s3_0"
    assert '"ctl"."tombstones"' in nsql.upsert and '"ctl"."tombstones"' in nsql.delete
    assert nsql.drop_children and nsql.insert_children
    assert build(4, (ROOT,), "ctl").insert_children == ""
