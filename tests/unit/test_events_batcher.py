from __future__ import annotations

import bson
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.batch import Op, Origin
from cdc.batcher import Accumulator, Position, to_changes
from cdc.events import ChangeEvent, Delete, Drop, Insert, TxnId, Update
from cdc.types import ClusterTime, Namespace

NS = Namespace("shop", "orders")
OTHER = Namespace("shop", "items")


def tok(n: int) -> bytes:
    return bson.encode({"_data": f"tok{n}"})


def ins(n: int, key: int, txn: TxnId | None = None, ns: Namespace = NS) -> Insert:
    return Insert(token=tok(n), cluster_time=ClusterTime(100, n), txn=txn, ns=ns,
                  document_key=bson.encode({"_id": key}),
                  full_document=bson.encode({"_id": key, "n": n}))


def upd(n: int, key: int, doc: bool = True) -> Update:
    return Update(token=tok(n), cluster_time=ClusterTime(100, n), ns=NS,
                  document_key=bson.encode({"_id": key}),
                  full_document=bson.encode({"_id": key, "u": n}) if doc else None)


def dele(n: int, key: int) -> Delete:
    return Delete(token=tok(n), cluster_time=ClusterTime(100, n), ns=NS,
                  document_key=bson.encode({"_id": key}))


T1 = TxnId(b"lsid-a", 1)
T2 = TxnId(b"lsid-a", 2)


def feed(acc: Accumulator, events: list[ChangeEvent], pbrt: int | None = None,
         requested: int = 100) -> None:
    for ev in events:
        acc.add(ev, now=0.0)
    acc.end_of_reply(count=len(events), requested=requested,
                     post_batch_token=tok(pbrt) if pbrt is not None else None,
                     reply_time=ClusterTime(100, pbrt) if pbrt is not None else None)


def test_a_trailing_transaction_is_held_until_an_empty_reply_proves_it_complete() -> None:
    acc = Accumulator(max_events=1000, max_wait=1.0)
    acc.start_at(None)
    feed(acc, [ins(1, 1), ins(2, 2, T1), ins(3, 3, T1)], pbrt=3, requested=3)
    pending = acc.take()
    assert pending is not None
    assert [e.token for e in pending.events] == [tok(1)]
    assert pending.position == Position(tok(1), ClusterTime(100, 1))
    acc.committed(pending.position)
    feed(acc, [], pbrt=9)
    pending = acc.take()
    assert pending is not None
    assert [e.token for e in pending.events] == [tok(2), tok(3)]
    assert pending.position == Position(tok(9), ClusterTime(100, 9))


def test_a_transaction_spanning_replies_is_never_cut() -> None:
    acc = Accumulator(max_events=2, max_wait=1.0)
    acc.start_at(None)
    feed(acc, [ins(1, 1, T1), ins(2, 2, T1)], pbrt=2, requested=2)
    assert acc.take() is None
    feed(acc, [ins(3, 3, T1), ins(4, 4, T2)], pbrt=4, requested=2)
    pending = acc.take()
    assert pending is not None
    assert [e.token for e in pending.events] == [tok(1), tok(2), tok(3)]
    assert pending.position.token == tok(3)
    assert acc.held == 1


def test_empty_reply_advances_the_checkpoint_without_changes() -> None:
    acc = Accumulator(max_events=10, max_wait=1.0)
    acc.start_at(Position(tok(1), ClusterTime(100, 1)))
    feed(acc, [], pbrt=5)
    assert acc.due(now=0.0)
    pending = acc.take()
    assert pending is not None and pending.events == []
    assert pending.position == Position(tok(5), ClusterTime(100, 5))
    acc.committed(pending.position)
    feed(acc, [], pbrt=5)
    assert not acc.due(now=0.0)
    assert acc.take() is None


def test_cuts_by_size_by_age_and_when_the_server_had_nothing_more() -> None:
    acc = Accumulator(max_events=3, max_wait=0.2)
    acc.start_at(None)
    feed(acc, [ins(1, 1), ins(2, 2)], pbrt=2, requested=2)  # full reply: more may come
    assert not acc.due(now=0.1)
    assert acc.due(now=0.25)  # too old
    acc.add(ins(3, 3), now=0.0)
    assert acc.due(now=0.0)  # size
    acc.take()
    feed(acc, [ins(4, 4)], pbrt=4, requested=100)  # short reply: caught up
    assert acc.due(now=0.0)


def test_checkpoint_cluster_time_never_goes_backwards_on_an_empty_reply() -> None:
    acc = Accumulator(max_events=10, max_wait=1.0)
    acc.start_at(None)
    feed(acc, [ins(7, 1)], pbrt=None)
    acc.end_of_reply(count=0, requested=10, post_batch_token=tok(8),
                     reply_time=ClusterTime(100, 2))
    pending = acc.take()
    assert pending is not None
    assert pending.position.cluster_time == ClusterTime(100, 7)


def test_changes_are_coalesced_to_the_last_state_per_key_in_stream_order() -> None:
    events: list[ChangeEvent] = [ins(1, 1), upd(2, 1), ins(3, 2), dele(4, 1), upd(5, 2)]
    changes, counts = to_changes(events)
    assert [(bson.decode(c.id_bson)["_id"], c.op, c.version & 0xFFFFFFFF) for c in changes] \
        == [(1, Op.DELETE, 4), (2, Op.UPSERT, 5)]
    assert all(c.origin is Origin.STREAM for c in changes)
    assert counts[("shop.orders", "insert")] == 2
    assert counts[("shop.orders", "update")] == 2
    assert counts[("shop.orders", "delete")] == 1


def test_only_a_last_state_from_an_insert_event_is_marked_fresh() -> None:
    changes, _ = to_changes([ins(1, 1), ins(2, 2), upd(3, 2), ins(4, 3), dele(5, 3),
                             ins(6, 3)])
    fresh = {bson.decode(c.id_bson)["_id"]: c.fresh for c in changes}
    assert fresh == {1: True, 2: False, 3: True}  # 3: re-inserted after its delete


def test_update_whose_lookup_found_nothing_emits_no_change() -> None:
    changes, _ = to_changes([ins(1, 1), upd(2, 1, doc=False)])
    assert len(changes) == 1
    assert changes[0].doc == bson.encode({"_id": 1, "n": 1})
    assert changes[0].version == ClusterTime(100, 1).packed


def test_resolver_redirects_or_skips_namespaces_and_ddl_events_emit_nothing() -> None:
    events: list[ChangeEvent] = [
        ins(1, 1, ns=OTHER), ins(2, 2),
        Drop(token=tok(3), cluster_time=ClusterTime(100, 3), ns=NS),
    ]
    changes, _ = to_changes(events, lambda ns: NS if ns == OTHER else None)
    assert [c.namespace for c in changes] == [NS]
    assert bson.decode(changes[0].id_bson) == {"_id": 1}


def test_a_full_reply_checkpoints_at_its_last_event_not_past_it() -> None:
    acc = Accumulator(max_events=100, max_wait=1.0)
    acc.start_at(None)
    feed(acc, [ins(1, 1), ins(2, 2)], pbrt=50, requested=2)
    pending = acc.take()
    assert pending is not None
    assert pending.position == Position(tok(2), ClusterTime(100, 2))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_batches_keep_every_event_once_in_order_and_never_split_a_transaction(
        data: st.DataObject) -> None:
    # A stream of transaction groups (txn id or None for single events).
    groups = data.draw(st.lists(st.tuples(st.booleans(), st.integers(1, 4)), max_size=25))
    events: list[ChangeEvent] = []
    txn_of: dict[bytes, TxnId | None] = {}
    n = 0
    for number, (in_txn, size) in enumerate(groups):
        txn = TxnId(b"s", number) if in_txn else None
        for _ in range(size if in_txn else 1):
            n += 1
            made = ins(n, n % 7, txn)
            events.append(made)
            txn_of[made.token] = txn
    max_events = data.draw(st.integers(1, 6))
    acc = Accumulator(max_events=max_events, max_wait=10.0)
    acc.start_at(None)
    taken: list[list[ChangeEvent]] = []
    positions: list[Position] = []

    def take() -> None:
        pending = acc.take()
        if pending is not None:
            taken.append(pending.events)
            positions.append(pending.position)
            acc.committed(pending.position)

    i = 0
    while i < len(events):
        size = data.draw(st.integers(1, 5))
        reply = events[i:i + size]
        i += len(reply)
        for ev in reply:
            acc.add(ev, now=0.0)
        acc.end_of_reply(count=len(reply), requested=size, post_batch_token=reply[-1].token,
                         reply_time=reply[-1].cluster_time)
        if data.draw(st.booleans()) or acc.due(now=0.0):
            take()
    acc.end_of_reply(count=0, requested=5, post_batch_token=tok(10_000),
                     reply_time=ClusterTime(100, 10_000))
    take()
    flat = [ev for batch in taken for ev in batch]
    assert flat == events
    for batch in taken:  # a transaction lies within one batch
        for txn in {txn_of[ev.token] for ev in batch} - {None}:
            assert sum(1 for ev in events if txn_of[ev.token] == txn) == sum(
                1 for ev in batch if txn_of[ev.token] == txn)
    times = [p.cluster_time for p in positions]
    assert times == sorted(times)
    assert positions[-1].token == tok(10_000)


def dele_at(n: int, key: int, inc: int) -> Delete:
    """A delete event whose cluster time (100, inc) may be shared (a batched delete)."""
    return Delete(token=tok(n), cluster_time=ClusterTime(100, inc), ns=NS,
                  document_key=bson.encode({"_id": key}))


def test_a_batch_ending_among_events_that_share_its_time_claims_one_tick_less() -> None:
    acc = Accumulator(max_events=3, max_wait=1.0)
    acc.start_at(None)
    # A batched delete: five events at (100, 7); a full reply of three ends among them.
    feed(acc, [dele_at(1, 1, 7), dele_at(2, 2, 7), dele_at(3, 3, 7)], pbrt=3, requested=3)
    first = acc.take()
    assert first is not None
    assert first.position == Position(tok(3), ClusterTime(100, 7))
    assert first.applied_through == ClusterTime(100, 6)
    acc.committed(first.position)
    # The rest of the group and an event of a later time: (100, 7) is complete.
    feed(acc, [dele_at(4, 4, 7), dele_at(5, 5, 7), dele_at(6, 6, 8)], pbrt=6, requested=3)
    second = acc.take()
    assert second is not None and second.applied_through == ClusterTime(100, 7)
    acc.committed(second.position)
    # A short reply whose post-batch token is its last event's own (cut by the byte
    # limit): nothing says the server got past that event's time.
    acc.add(dele_at(7, 7, 9), now=0.0)
    acc.add(dele_at(8, 8, 9), now=0.0)
    acc.end_of_reply(count=2, requested=100, post_batch_token=tok(8),
                     reply_time=ClusterTime(100, 9))
    third = acc.take()
    assert third is not None and third.applied_through == ClusterTime(100, 8)
    acc.committed(third.position)
    # An empty reply: the server had nothing more up to its post-batch time.
    feed(acc, [], pbrt=11)
    fourth = acc.take()
    assert fourth is not None and fourth.applied_through == ClusterTime(100, 11)
    acc.committed(fourth.position)
    # A short reply ending with a token past its last event: scanned past it.
    feed(acc, [dele_at(12, 12, 12)], pbrt=13)
    fifth = acc.take()
    assert fifth is not None and fifth.applied_through == ClusterTime(100, 13)


def test_a_checkpoint_behind_an_open_transaction_claims_its_own_time() -> None:
    acc = Accumulator(max_events=1, max_wait=1.0)
    acc.start_at(None)
    feed(acc, [ins(1, 1), ins(2, 2, txn=T1)], pbrt=2, requested=2)
    pending = acc.take()
    assert pending is not None and pending.events == [ins(1, 1)]
    # A later event (the open transaction's) was read: (100, 1) is complete.
    assert pending.applied_through == ClusterTime(100, 1)
