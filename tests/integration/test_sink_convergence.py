"""Convergence of the version-guarded sink (DESIGN §3.1), as a property on real PostgreSQL.

A random history (documents present before the stream opened, then stream events with
non-decreasing cluster times, ties included) is delivered the way production delivers
it: the stream at least once (resumes from earlier positions replay a suffix), backfill
rows read at random times and labelled with their read's start time, inserted anywhere
and duplicated, everything cut into random batches. The tables and tombstones must end
equal to applying the same changes one at a time in their canonical order, in
document mode and in column mode (where child tables must follow their parent).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import bson
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc.batch import Batch, Change, Op, Origin
from cdc.mapping.model import ReversibleMapper
from cdc.sink import Sink
from tests.integration.sink_support import (
    CONTROL,
    NS,
    column_mapper_for,
    documents,
    id_bson,
    key_of,
    mapper_for,
    tombstones,
)

N_KEYS = 4
STREAM_START = 100


def _body(content: str | None) -> dict[str, Any]:
    """The document's fields: its content and an array whose length varies with it."""
    size = sum(map(ord, content or "")) % 4
    return {"c": content, "items": [{"n": j, "tag": content} for j in range(size)]}


def _change(key: int, version: int, op: Op, content: str | None, origin: Origin,
            fresh: bool = False) -> Change:
    doc = None if op is Op.DELETE else bson.encode({"_id": key, **_body(content)})
    return Change(NS, id_bson(key), version, op, doc, origin, fresh and op is Op.UPSERT)


def _content(change: Change) -> str | None:
    return None if change.doc is None else str(bson.decode(change.doc)["c"])


def _fold(changes: list[Change]) -> dict[int, Change]:
    """Apply one change at a time with the version rule; the winner per document."""
    state: dict[int, Change] = {}
    for c in changes:
        key = bson.decode(c.id_bson)["_id"]
        cur = state.get(key)
        if cur is None or c.version > cur.version or (
            c.version == cur.version and c.origin is Origin.STREAM
        ):
            state[key] = c
    return state


class Scenario:
    def __init__(self, stream: list[Change], delivered: list[Change],
                 batches: list[list[Change]], backfill: list[Change]) -> None:
        self.stream = stream
        self.delivered = delivered
        self.batches = batches
        self.backfill = backfill

    def __repr__(self) -> str:
        def show(c: Change) -> str:
            return (f"{c.origin.value[0]}:{bson.decode(c.id_bson)['_id']}@{c.version}"
                    f"{'-' if c.op is Op.DELETE else '=' + str(_content(c))}")
        return "batches=" + repr([[show(c) for c in b] for b in self.batches])


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    present = {k: draw(st.booleans()) for k in range(N_KEYS)}
    stream: list[Change] = []
    version = STREAM_START
    for j in range(draw(st.integers(0, 12))):
        # A step of 0 puts the event in the previous one's transaction (same cluster time).
        version += draw(st.sampled_from([1, 1, 2])) if j == 0 else draw(
            st.sampled_from([0, 1, 1, 2]))
        # Often the same document again: repeated updates, several in one transaction.
        key = draw(st.integers(0, N_KEYS - 1)) if not stream or draw(st.booleans()) else (
            bson.decode(stream[-1].id_bson)["_id"])
        op = draw(st.sampled_from([Op.UPSERT, Op.UPSERT, Op.DELETE]))
        # "fresh" (an insert event) is only a hint to the sink: any value must converge.
        stream.append(_change(key, version, op, f"e{j}", Origin.STREAM, draw(st.booleans())))
    last = version + 2

    def state_at(key: int, t: int) -> str | None:
        content = f"init{key}" if present[key] else None
        for c in stream:
            if c.version <= t and bson.decode(c.id_bson)["_id"] == key:
                content = _content(c)
        return content

    backfill: list[Change] = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.integers(0, N_KEYS - 1))
        label = draw(st.integers(STREAM_START, last))  # the read's start time
        content = state_at(key, draw(st.integers(label, last)))  # content may be newer
        if content is not None:
            backfill.append(_change(key, label, Op.UPSERT, content, Origin.BACKFILL))

    # At-least-once stream delivery: after a resume, a suffix is delivered again.
    delivered: list[Change] = []
    start = reached = 0
    for attempt in range(4):
        end = len(stream) if attempt == 3 else draw(st.integers(reached, len(stream)))
        delivered.extend(stream[start:end])
        reached = end
        if end == len(stream) and draw(st.booleans()):
            break
        start = draw(st.integers(0, end))
    for bf in backfill + draw(st.lists(st.sampled_from(backfill), max_size=3)
                              if backfill else st.just([])):
        delivered.insert(draw(st.integers(0, len(delivered))), bf)

    cut_after = draw(st.lists(st.booleans(), min_size=len(delivered),
                              max_size=len(delivered)))
    bounds = [0, *(i + 1 for i, cut in enumerate(cut_after) if cut), len(delivered)]
    batches = [delivered[a:b] for a, b in itertools.pairwise(bounds)]
    return Scenario(stream, delivered, batches, backfill)


Fixture = tuple[BlockingPortal, Sink, psycopg.Connection[Any], ReversibleMapper]


@pytest.fixture(params=["document", "column"])
def sink_portal(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[Fixture]:
    mapper_of = mapper_for if request.param == "document" else column_mapper_for
    with start_blocking_portal("asyncio") as portal:
        sink = portal.call(Sink.open, pg_dsn, CONTROL, mapper_of)
        try:
            portal.call(sink.apply, Batch([_change(0, 1, Op.DELETE, None, Origin.STREAM)]))
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                yield portal, sink, conn, mapper_of(NS)
        finally:
            portal.call(sink.close)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(scenario=scenarios())
def test_any_delivery_order_converges_to_in_order_application(
    sink_portal: Fixture, pg_dsn: str, scenario: Scenario,
) -> None:
    portal, sink, conn, mapper = sink_portal
    conn.execute(sql.SQL("TRUNCATE {}, {}").format(
        sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in mapper.tables()),
        sql.Identifier(CONTROL, "tombstones")))
    for batch in scenario.batches:
        portal.call(sink.apply, Batch(batch))

    expected = _fold(scenario.stream + scenario.backfill)
    # The model is sound: in-order application of what was delivered agrees.
    assert _fold(scenario.delivered) == expected
    assert documents(pg_dsn, mapper) == {
        key_of(k): ({"_id": k, **_body(_content(c))}, c.version)
        for k, c in expected.items() if c.op is Op.UPSERT
    }
    assert tombstones(pg_dsn) == {
        key_of(k): c.version for k, c in expected.items() if c.op is Op.DELETE
    }
