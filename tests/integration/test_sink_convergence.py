"""Convergence of the version-guarded sink (DESIGN §3.1), as a property on real PostgreSQL.

A random history (documents present before the stream opened, then stream events with
non-decreasing cluster times, ties included) is delivered the way production delivers
it: the stream at least once (resumes from earlier positions replay a suffix), backfill
rows read at random times and labelled with their read's start time, inserted anywhere
and duplicated, everything cut into random batches. Each read holds a read lease
(:mod:`cdc.sink.readers`) opened at a random batch boundary no later than production
could open it — before the stream delivered anything newer than the read's label,
since the label is taken after the lease — and closed at a random boundary after its
last row was written. The tables must end equal to applying the same changes one at a
time in their canonical order, in document mode and in column mode (where child tables
must follow their parent). Tombstones: with a lease held over the whole delivery, one
per deleted document at its last delete's version, as before leases existed; otherwise
only deleted documents have one, never newer than their last delete.
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
                 batches: list[list[Change]], backfill: list[Change],
                 leases: list[tuple[int, int]], held: bool) -> None:
        self.stream = stream
        self.delivered = delivered
        self.batches = batches
        self.backfill = backfill
        self.leases = leases
        """Per read (index in ``backfill``): (open, close) as positions in ``delivered``:
        opened before the batch holding the first, closed after the batch holding the
        one before the second."""
        self.held = held
        """A lease on the namespace is held over the whole delivery."""

    def __repr__(self) -> str:
        def show(c: Change) -> str:
            return (f"{c.origin.value[0]}:{bson.decode(c.id_bson)['_id']}@{c.version}"
                    f"{'-' if c.op is Op.DELETE else '=' + str(_content(c))}")
        return (f"batches={[[show(c) for c in b] for b in self.batches]!r}"
                f" leases={self.leases!r} held={self.held}")


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
        # Content may be newer than the label; often just as old (read early).
        content = state_at(key, draw(st.just(label) | st.integers(label, last)))
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
        # Often last: after every delete it may have missed, the case leases exist for.
        at = draw(st.integers(0, len(delivered)) | st.just(len(delivered)))
        delivered.insert(at, bf)

    leases: list[tuple[int, int]] = []
    for read in backfill:
        spots = [i for i, c in enumerate(delivered) if c is read]
        newer = next((i for i, c in enumerate(delivered)
                      if c.origin is Origin.STREAM and c.version > read.version),
                     len(delivered))
        leases.append((draw(st.integers(0, min(spots[0], newer))),
                       draw(st.integers(spots[-1] + 1, len(delivered)))))

    cut_after = draw(st.lists(st.booleans(), min_size=len(delivered),
                              max_size=len(delivered)))
    bounds = [0, *(i + 1 for i, cut in enumerate(cut_after) if cut), len(delivered)]
    batches = [delivered[a:b] for a, b in itertools.pairwise(bounds)]
    return Scenario(stream, delivered, batches, backfill, leases,
                    draw(st.integers(0, 3)) == 0)


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
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(CONTROL, "readers")))
    if scenario.held:
        portal.call(sink.open_reader, NS, "whole run", 3600)
    live: dict[int, int] = {}  # read index -> lease id
    end = 0
    for batch in scenario.batches:
        begin, end = end, end + len(batch)
        for j, (opened, _) in enumerate(scenario.leases):
            if begin <= opened < end:
                live[j] = portal.call(sink.open_reader, NS, f"read {j}", 3600)
        reads = [j for j, read in enumerate(scenario.backfill)
                 if any(c is read for c in batch)]
        portal.call(sink.apply, Batch(batch, reader=live[reads[0]] if reads else None))
        for j, (_, closed) in enumerate(scenario.leases):
            if closed <= end and j in live:
                portal.call(sink.close_reader, live.pop(j))

    expected = _fold(scenario.stream + scenario.backfill)
    # The model is sound: in-order application of what was delivered agrees.
    assert _fold(scenario.delivered) == expected
    assert documents(pg_dsn, mapper) == {
        key_of(k): ({"_id": k, **_body(_content(c))}, c.version)
        for k, c in expected.items() if c.op is Op.UPSERT
    }
    deleted = {key_of(k): c.version for k, c in expected.items() if c.op is Op.DELETE}
    if scenario.held:
        assert tombstones(pg_dsn) == deleted
    else:
        assert all(k in deleted and v <= deleted[k] for k, v in tombstones(pg_dsn).items())
