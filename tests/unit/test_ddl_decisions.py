"""The tailer's persisted DDL decisions, as the backfill reads them."""

from __future__ import annotations

from cdc.state import DdlDecisions
from cdc.types import Namespace

A, B, C = Namespace("d", "a"), Namespace("d", "b"), Namespace("d", "c")


def test_renames_followed_twice_feed_the_first_table_from_the_latest_name() -> None:
    # a -> b at time 5, then b -> c at time 9: both aliases point at a's table.
    decisions = DdlDecisions(aliases={B: A, C: A}, renamed_at={B: 5, C: 9})
    assert decisions.target(C) == A
    assert decisions.target(B) == A
    assert decisions.source(A) == C
    assert decisions.source(Namespace("d", "other")) == Namespace("d", "other")


def test_renamed_back_to_its_first_name_is_read_there_again() -> None:
    decisions = DdlDecisions(aliases={B: A, A: A}, renamed_at={B: 5, A: 7})
    assert decisions.source(A) == A


def test_marked_tables_and_databases_are_fed_nothing() -> None:
    decisions = DdlDecisions(aliases={B: A}, renamed_at={B: 5}, marked={A},
                             marked_dbs={"gone"})
    assert decisions.target(B) is None
    assert decisions.target(A) is None
    assert decisions.target(Namespace("gone", "x")) is None
    assert decisions.target(C) == C


def test_a_collection_re_created_under_a_followed_old_name_feeds_nothing() -> None:
    # a renamed to b (b feeds a's table); a new collection a is then displaced.
    decisions = DdlDecisions(aliases={B: A}, renamed_at={B: 5})
    assert decisions.displaced(A)
    assert decisions.target(A) is None
    assert decisions.target(B) == A
    assert not decisions.displaced(C)
    # Renamed back (b to a): a is an alias of itself again, not displaced.
    back = DdlDecisions(aliases={B: A, A: A}, renamed_at={B: 5, A: 7})
    assert not back.displaced(A)
    assert back.target(A) == A


def test_the_tables_to_fill_follow_renames_whatever_the_include_pattern_finds() -> None:
    decisions = DdlDecisions(aliases={B: A}, renamed_at={B: 5}, marked={Namespace("d", "m")})
    # "d.*" finds b (renamed from a) and c: b feeds a's table.
    assert decisions.tables([B, C]) == [A, C]
    # An exact include "d.a" still names a after the rename; b feeds it.
    assert decisions.tables([A]) == [A]
    # A rename out of what the patterns find: a's table is still fed by b.
    assert decisions.tables([]) == [A]
    assert decisions.tables([Namespace("d", "m"), C]) == [A, C]


def test_an_operator_names_a_followed_table_by_its_first_or_its_new_name() -> None:
    decisions = DdlDecisions(aliases={B: A}, renamed_at={B: 5}, marked={Namespace("d", "m")})
    assert decisions.table_of(A) == A
    assert decisions.table_of(B) == A
    assert decisions.table_of(C) == C
    assert decisions.table_of(Namespace("d", "m")) is None
