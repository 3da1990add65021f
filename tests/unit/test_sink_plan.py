"""Coalescing, lazy mapping and dead letters of the sink's batch planner (no database)."""

from __future__ import annotations

import json
from typing import Any

import bson

from cdc.batch import Batch, Change, Op, Origin
from cdc.mapping import ChildRule, ColumnRule, Mapper, MappingConfig, MappingRule, resolve
from cdc.sink.plan import Plan, plan_batch
from cdc.types import Namespace

NS = Namespace("shop", "orders")
OTHER = Namespace("shop", "users")
MAPPING = MappingConfig()


def mapper(ns: Namespace) -> Mapper:
    return resolve(MAPPING, ns)


def up(i: Any, version: int, tag: str = "", origin: Origin = Origin.STREAM,
       ns: Namespace = NS) -> Change:
    return Change(ns, bson.encode({"_id": i}), version, Op.UPSERT,
                  bson.encode({"_id": i, "tag": tag}), origin)


def rm(i: Any, version: int, origin: Origin = Origin.STREAM) -> Change:
    return Change(NS, bson.encode({"_id": i}), version, Op.DELETE, None, origin)


def staged(plan: Plan, ns: Namespace = NS) -> tuple[list[str], list[int]]:
    """Tags of the root rows the planner streams, and positions it wants removed."""
    p = plan.namespaces[ns]
    rows = list(p.root_records(plan.dead_letters, plan.result))
    gone = set(p.losers)
    tags = [_tag(r) for r in rows if r[-1] not in gone]
    return tags, sorted(gone)


def _tag(row: tuple[Any, ...]) -> str:
    return str(json.loads(row[3])["tag"])


def test_later_stream_change_wins_a_tie_and_older_changes_are_skipped() -> None:
    plan = plan_batch(Batch([up(1, 5, "a"), up(1, 5, "b"), up(1, 4, "old")]), mapper)
    assert staged(plan) == (["b"], [])
    assert plan.result.of(NS, Op.UPSERT).skipped == 2


def test_backfill_row_loses_a_tie_inside_the_batch() -> None:
    plan = plan_batch(Batch([up(1, 5, "event"), up(1, 5, "copy", Origin.BACKFILL)]), mapper)
    assert staged(plan) == (["event"], [])


def test_delete_after_upsert_leaves_only_the_delete() -> None:
    plan = plan_batch(Batch([up(1, 5), rm(1, 6), up(2, 6, "x")]), mapper)
    p = plan.namespaces[NS]
    assert [(d[1], d[2]) for d in p.deletes] == [(6, True)]
    assert staged(plan) == (["x"], [])
    assert plan.result.of(NS, Op.UPSERT).skipped == 1


def test_ids_that_map_to_one_key_are_one_document() -> None:
    # int32 1 and double 1.0 are the same _id for MongoDB and the same _key.
    plan = plan_batch(Batch([up(1, 5, "int"), up(1.0, 6, "double")]), mapper)
    p = plan.namespaces[NS]
    rows = list(p.root_records(plan.dead_letters, plan.result))
    assert len(rows) == 2  # both were streamed before the second one's key was known
    assert p.losers == [0] and p.staged_upserts == 1
    assert _tag(rows[1]) == "double"
    assert plan.result.of(NS, Op.UPSERT).skipped == 1


def test_delete_displaced_by_a_later_upsert_of_the_same_key_is_dropped_from_staging() -> None:
    plan = plan_batch(Batch([rm(1, 5), up(1.0, 6, "back")]), mapper)
    p = plan.namespaces[NS]
    assert p.staged_deletes == 1
    list(p.root_records(plan.dead_letters, plan.result))
    assert (p.losers, p.staged_deletes, p.staged_upserts) == ([0], 0, 1)


def test_deletes_are_grouped_by_origin_with_the_origin_as_one_flag() -> None:
    stream_only = plan_batch(Batch([rm(1, 5), rm(2, 6)]), mapper)
    assert [(vs, flag) for _, vs, flag in stream_only.namespaces[NS].delete_arrays()] \
        == [([5, 6], True)]
    mixed = plan_batch(Batch([rm(1, 5), rm(2, 6, Origin.BACKFILL), rm(3, 7)]), mapper)
    groups = mixed.namespaces[NS].delete_arrays()
    assert [(vs, flag) for _, vs, flag in groups] == [([5, 7], True), ([6], False)]
    key = mapper(NS).map_key
    assert [ks for ks, _, _ in groups] == [
        [key(bson.encode({"_id": 1})), key(bson.encode({"_id": 3}))],
        [key(bson.encode({"_id": 2}))]]
    # A delete displaced by a later upsert of its key leaves its group.
    displaced = plan_batch(Batch([rm(1, 5, Origin.BACKFILL), up(1.0, 6, "back")]), mapper)
    p = displaced.namespaces[NS]
    list(p.root_records(displaced.dead_letters, displaced.result))
    assert p.delete_arrays() == []


def test_unmappable_document_becomes_a_dead_letter_with_its_raw_bson() -> None:
    bad = up(2, 7, "nul\x00")
    plan = plan_batch(Batch([up(1, 7, "ok"), bad]), mapper)
    assert staged(plan) == (["ok"], [])
    assert len(plan.dead_letters) == 1
    letter = plan.dead_letters[0]
    assert (letter.namespace, letter.id_bson, letter.version, letter.raw) == (
        "shop.orders", bad.id_bson, 7, bad.doc)
    assert letter.reason
    assert plan.result.of(NS, Op.UPSERT).dead_lettered == 1


def test_namespaces_are_planned_apart() -> None:
    plan = plan_batch(Batch([up(1, 5, "a"), up(1, 5, "b", ns=OTHER)]), mapper)
    assert set(plan.namespaces) == {NS, OTHER}
    assert staged(plan, OTHER) == (["b"], [])
    assert staged(plan, NS) == (["a"], [])


def test_rows_carry_version_origin_and_position() -> None:
    plan = plan_batch(Batch([up(1, 5), up(2, 9, origin=Origin.BACKFILL)]), mapper)
    p = plan.namespaces[NS]
    tails = [r[-3:] for r in p.root_records(plan.dead_letters, plan.result)]
    assert tails == [(5, True, 0), (9, False, 1)]


COLUMN = MappingConfig(rules=(MappingRule(
    namespace=str(NS), mode="column", columns=(ColumnRule("tag", "text"),),
    children=(ChildRule("items", "orders_items"),)),))


def test_child_rows_of_a_displaced_document_are_left_out() -> None:
    def doc(i: Any, n: int) -> bytes:
        return bson.encode({"_id": i, "tag": str(n), "items": [{"j": j} for j in range(n)]})

    changes = [Change(NS, bson.encode({"_id": i}), v, Op.UPSERT, doc(i, n))
               for i, v, n in ((1, 5, 3), (2, 5, 2), (1.0, 6, 1))]
    plan = plan_batch(Batch(changes), lambda ns: resolve(COLUMN, ns))
    p = plan.namespaces[NS]
    list(p.root_records(plan.dead_letters, plan.result, direct=True))
    assert p.losers == [0]
    kept = p.children_without_losers("orders_items")
    assert [(r[0], r[1]) for r in kept] == [
        (p.mapper.map_key(bson.encode({"_id": 2})), 0),
        (p.mapper.map_key(bson.encode({"_id": 2})), 1),
        (p.mapper.map_key(bson.encode({"_id": 1})), 0),
    ]
    assert all(r[-1] in (5, 6) for r in kept)
    assert [t for t in p.direct_tails] == [(True, 0), (True, 1), (True, 2)]


def test_a_coalesced_batch_plans_like_one_the_sink_coalesces_itself() -> None:
    """The tailer's batches have distinct raw ids; skipping the planner's own coalescing
    changes nothing, and ids that map to one key (1 and 1.0) are still decided."""
    changes = [up(1, 5, "a"), rm(2, 6), up(3, 7, "c", ns=OTHER), up(1.0, 8, "b"),
               rm(4, 9), up(5, 9, "e")]
    plain = plan_batch(Batch(list(changes)), mapper)
    fast = plan_batch(Batch(list(changes), coalesced=True), mapper)
    rows = {ns: staged(fast, ns) for ns in (NS, OTHER)}
    assert rows == {ns: staged(plain, ns) for ns in (NS, OTHER)}
    assert rows[NS] == (["b", "e"], [0])
    for ns in (NS, OTHER):
        assert fast.namespaces[ns].delete_arrays() == plain.namespaces[ns].delete_arrays()
        assert fast.namespaces[ns].all_new == plain.namespaces[ns].all_new
    assert fast.result == plain.result
