"""The sink against real PostgreSQL: version guard, tombstones, ties, dead letters,
checkpoints, schema creation and connection loss."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from cdc.batch import Batch, Change, Checkpoint, Op, Origin
from cdc.errors import InvariantError, TargetUnavailable
from cdc.sink import Sink
from cdc.sink import sink as sink_module
from cdc.sink.plan import NamespacePlan
from tests.integration.sink_support import (
    CONTROL,
    NS,
    LeasedSink,
    delete,
    key_of,
    mapper_for,
    rows,
    scalar,
    tombstones,
    upsert,
)

pytestmark = pytest.mark.anyio

BACKFILL = Origin.BACKFILL


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[Sink]:
    s = await (await LeasedSink.open(pg_dsn, CONTROL, mapper_for, max_size=2)).lease_all()
    try:
        yield s
    finally:
        await s.close()


async def test_backfill_never_resurrects_deleted_document(sink: Sink, pg_dsn: str) -> None:
    await sink.apply(Batch([upsert(1, 10), delete(1, 20)]))
    result = await sink.apply(Batch([upsert(1, 15, origin=BACKFILL),
                                     upsert(1, 20, origin=BACKFILL)]))
    assert rows(pg_dsn) == {}
    assert tombstones(pg_dsn) == {key_of(1): 20}
    assert result.of(NS, Op.UPSERT).applied == 0
    assert result.of(NS, Op.UPSERT).skipped == 2


async def test_delete_of_unseen_document_blocks_its_older_backfill(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([delete(7, 30)]))
    await sink.apply(Batch([upsert(7, 25, origin=BACKFILL)]))
    assert rows(pg_dsn) == {}
    await sink.apply(Batch([upsert(7, 31, {"back": True})]))
    assert rows(pg_dsn) == {key_of(7): ({"_id": 7, "back": True}, 31)}
    assert tombstones(pg_dsn) == {}


async def test_stale_backfill_row_never_overwrites_newer_stream_row(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 50, {"state": "new"})]))
    result = await sink.apply(Batch([upsert(1, 40, {"state": "old"}, origin=BACKFILL)]))
    assert rows(pg_dsn) == {key_of(1): ({"_id": 1, "state": "new"}, 50)}
    assert result.of(NS, Op.UPSERT).skipped == 1
    await sink.apply(Batch([upsert(1, 60, {"state": "copied"}, origin=BACKFILL)]))
    assert rows(pg_dsn) == {key_of(1): ({"_id": 1, "state": "copied"}, 60)}


async def test_stream_wins_ties_against_stored_state_and_backfill_loses_them(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 5, {"s": "first"}), upsert(2, 5, {"s": "first"})]))
    await sink.apply(Batch([upsert(1, 5, {"s": "stream"})]))
    await sink.apply(Batch([upsert(2, 5, {"s": "backfill"}, origin=BACKFILL)]))
    assert rows(pg_dsn) == {
        key_of(1): ({"_id": 1, "s": "stream"}, 5),
        key_of(2): ({"_id": 2, "s": "first"}, 5),
    }
    # The same rules decide ties against tombstones.
    await sink.apply(Batch([delete(1, 9), delete(2, 9)]))
    await sink.apply(Batch([upsert(1, 9, {"s": "again"}),
                            upsert(2, 9, {"s": "copy"}, origin=BACKFILL)]))
    assert rows(pg_dsn) == {key_of(1): ({"_id": 1, "s": "again"}, 9)}
    assert tombstones(pg_dsn) == {key_of(2): 9}


async def test_ties_inside_one_batch_follow_stream_order_and_origin(
    sink: Sink, pg_dsn: str
) -> None:
    result = await sink.apply(Batch([
        upsert(1, 5, {"s": "a"}), upsert(1, 5, {"s": "b"}),
        upsert(1, 5, {"s": "copy"}, origin=BACKFILL),
        upsert(2, 5, {"s": "copy"}, origin=BACKFILL), upsert(2, 5, {"s": "event"}),
        upsert(3, 6, {"s": "x"}), delete(3, 6),
    ]))
    assert rows(pg_dsn) == {
        key_of(1): ({"_id": 1, "s": "b"}, 5),
        key_of(2): ({"_id": 2, "s": "event"}, 5),
    }
    assert tombstones(pg_dsn) == {key_of(3): 6}
    assert result.of(NS, Op.UPSERT).applied == 2
    assert result.of(NS, Op.UPSERT).skipped == 4
    assert result.of(NS, Op.DELETE).applied == 1


async def test_unmappable_document_is_dead_lettered_while_rest_of_batch_lands(
    sink: Sink, pg_dsn: str
) -> None:
    bad = upsert(2, 11, {"name": "nul\x00here"})
    cp = Checkpoint("main", b"\x05\x00\x00\x00\x00", 11)
    result = await sink.apply(Batch([upsert(1, 10), bad, upsert(3, 12)], cp))
    assert set(rows(pg_dsn)) == {key_of(1), key_of(3)}
    assert result.of(NS, Op.UPSERT).dead_lettered == 1
    assert result.of(NS, Op.UPSERT).applied == 2
    with psycopg.connect(pg_dsn) as conn:
        letters = conn.execute(sql.SQL(
            "SELECT namespace, id_bson, version, raw, reason, resolved_at"
            " FROM {}.dead_letters").format(sql.Identifier(CONTROL))).fetchall()
    assert len(letters) == 1
    namespace, id_bson, version, raw, reason, resolved = letters[0]
    assert (namespace, bytes(id_bson), version, bytes(raw)) == (
        "shop.orders", bad.id_bson, 11, bad.doc)
    assert reason and resolved is None
    assert await sink.load_checkpoint("main") == cp


async def test_checkpoint_and_chunk_commit_atomically_with_rows(
    sink: Sink, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        chunk_id = conn.execute(sql.SQL(
            "INSERT INTO {}.chunks (namespace, seq, status) VALUES ('shop.orders', 0,"
            " 'running') RETURNING id").format(sql.Identifier(CONTROL))).fetchone()
    assert chunk_id is not None
    # A batch that fails (its chunk does not exist) leaves neither rows nor checkpoint.
    with pytest.raises(InvariantError):
        await sink.apply(Batch([upsert(1, 10), delete(2, 10)],
                               Checkpoint("main", b"tok1", 10), chunk_id=chunk_id[0] + 99))
    assert rows(pg_dsn) == {}
    assert tombstones(pg_dsn) == {}
    assert await sink.load_checkpoint("main") is None
    # The same batch, correct this time, lands whole: rows, checkpoint and chunk state.
    await sink.apply(Batch([upsert(1, 10), delete(2, 10)],
                           Checkpoint("main", b"tok1", 10), chunk_id=chunk_id[0]))
    assert set(rows(pg_dsn)) == {key_of(1)}
    assert await sink.load_checkpoint("main") == Checkpoint("main", b"tok1", 10)
    status = scalar(pg_dsn, sql.SQL("SELECT status FROM {}.chunks WHERE id = %s").format(
        sql.Identifier(CONTROL)), (chunk_id[0],))
    assert status == "done"


async def test_empty_batch_advances_checkpoint_and_checkpoint_never_moves_back(
    sink: Sink,
) -> None:
    await sink.apply(Batch([], Checkpoint("main", b"tok9", 90)))
    assert await sink.load_checkpoint("main") == Checkpoint("main", b"tok9", 90)
    await sink.apply(Batch([], Checkpoint("main", b"tok5", 50)))
    assert await sink.load_checkpoint("main") == Checkpoint("main", b"tok9", 90)
    await sink.apply(Batch([], Checkpoint("main", None, 95)))
    assert await sink.load_checkpoint("main") == Checkpoint("main", None, 95)


async def test_replayed_batches_change_nothing(sink: Sink, pg_dsn: str) -> None:
    batch = Batch([upsert(1, 10), upsert(2, 11), delete(1, 12), upsert(3, 13)],
                  Checkpoint("main", b"t", 13))
    await sink.apply(batch)
    before = (rows(pg_dsn), tombstones(pg_dsn))
    again = await sink.apply(batch)
    assert (rows(pg_dsn), tombstones(pg_dsn)) == before
    assert again.total("dead_lettered") == 0


async def test_lost_connection_raises_target_unavailable_and_retry_succeeds(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 1)]))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                     " AND application_name = ''")
    batch = Batch([upsert(2, 2)], Checkpoint("main", b"t2", 2))
    with pytest.raises(TargetUnavailable):
        await sink.apply(batch)
    await sink.apply(batch)
    assert set(rows(pg_dsn)) == {key_of(1), key_of(2)}
    assert await sink.load_checkpoint("main") == Checkpoint("main", b"t2", 2)


async def test_backfill_delete_loses_tie_and_stream_delete_wins_it(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([upsert(1, 8), upsert(2, 8)]))
    result = await sink.apply(Batch([delete(1, 8, origin=BACKFILL), delete(2, 8)]))
    assert set(rows(pg_dsn)) == {key_of(1)}
    assert tombstones(pg_dsn) == {key_of(2): 8}
    assert (result.of(NS, Op.DELETE).applied, result.of(NS, Op.DELETE).skipped) == (1, 1)


async def test_ids_equal_in_mongodb_land_as_one_row(sink: Sink, pg_dsn: str) -> None:
    # 1 (int32) and 1.0 (double) are one _id for MongoDB, hence one _key.
    result = await sink.apply(Batch([upsert(1, 5, {"t": "int"}), upsert(1.0, 6, {"t": "dbl"}),
                                     delete(2, 6), upsert(2.0, 7, {"t": "back"})]))
    assert rows(pg_dsn) == {key_of(1): ({"_id": 1.0, "t": "dbl"}, 6),
                            key_of(2): ({"_id": 2.0, "t": "back"}, 7)}
    assert tombstones(pg_dsn) == {}
    assert result.of(NS, Op.UPSERT).applied == 2
    assert result.of(NS, Op.UPSERT).skipped == 1
    assert result.of(NS, Op.DELETE).skipped == 1


async def test_backfill_batch_lands_around_deleted_and_newer_documents(
    sink: Sink, pg_dsn: str
) -> None:
    await sink.apply(Batch([delete(5, 100), upsert(3, 100, {"s": "stream"})]))
    result = await sink.apply(Batch(
        [upsert(i, 50, {"s": "copy"}, origin=BACKFILL) for i in range(1, 11)]))
    got = rows(pg_dsn)
    assert set(got) == {key_of(i) for i in range(1, 11) if i != 5}
    assert got[key_of(3)] == ({"_id": 3, "s": "stream"}, 100)
    assert got[key_of(7)] == ({"_id": 7, "s": "copy"}, 50)
    assert tombstones(pg_dsn) == {key_of(5): 100}
    assert (result.of(NS, Op.UPSERT).applied, result.of(NS, Op.UPSERT).skipped) == (8, 2)


async def test_backfill_of_unseen_keys_lands_whole_and_stream_changes_follow(
    sink: Sink, pg_dsn: str
) -> None:
    first = await sink.apply(Batch(
        [upsert(i, 50, origin=BACKFILL) for i in range(100)] + [upsert(1.0, 50, origin=BACKFILL)]))
    assert first.of(NS, Op.UPSERT).applied == 100
    assert first.of(NS, Op.UPSERT).skipped == 1  # 1 and 1.0 are one document
    await sink.apply(Batch([upsert(7, 60, {"s": "later"}), delete(8, 60)]))
    got = rows(pg_dsn)
    assert len(got) == 99
    assert got[key_of(7)] == ({"_id": 7, "s": "later"}, 60)
    assert got[key_of(1)][1] == 50


def _fresh(i: int, version: int, body: dict[str, object] | None = None) -> Change:
    """A stream insert event's change (the ``fresh`` hint set)."""
    return msgspec.structs.replace(upsert(i, version, body), fresh=True)


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per namespace batch the direct path was offered: whether its rows went straight
    into the target."""
    went: list[bool] = []
    real = Sink._direct
    wants = sink_module._wants_direct

    def offered(known: Any, p: NamespacePlan) -> bool:
        if not wants(known, p):
            went.append(False)  # paused: staged without trying
            return False
        return True

    async def recorded(self: Sink, conn: Any, known: Any, p: NamespacePlan, *a: Any) -> None:
        await real(self, conn, known, p, *a)
        went.append(p.direct)

    monkeypatch.setattr(Sink, "_direct", recorded)
    monkeypatch.setattr(sink_module, "_wants_direct", offered)
    return went


async def test_stream_inserts_of_new_keys_go_straight_into_the_target(
    sink: Sink, pg_dsn: str, direct: list[bool]
) -> None:
    result = await sink.apply(Batch([_fresh(i, 10 + i) for i in range(5)],
                                    Checkpoint("s", b"t", 14)))
    assert direct == [True]
    assert result.of(NS, Op.UPSERT).applied == 5
    assert rows(pg_dsn) == {key_of(i): ({"_id": i, "v": 10 + i}, 10 + i) for i in range(5)}


async def test_a_fresh_hint_never_beats_what_the_target_holds(sink: Sink, pg_dsn: str) -> None:
    await sink.apply(Batch([upsert(1, 50, {"newer": True}), upsert(2, 20, origin=BACKFILL),
                            upsert(3, 10), delete(3, 40)]))
    # Key 1 has a newer row, key 2 a backfill row of the same version (the event wins
    # the tie), key 3 a newer tombstone, key 4 nothing.
    result = await sink.apply(Batch([_fresh(1, 30), _fresh(2, 20, {"event": True}),
                                     _fresh(3, 35), _fresh(4, 36)]))
    assert rows(pg_dsn) == {
        key_of(1): ({"_id": 1, "newer": True}, 50),
        key_of(2): ({"_id": 2, "event": True}, 20),
        key_of(4): ({"_id": 4, "v": 36}, 36),
    }
    assert tombstones(pg_dsn) == {key_of(3): 40}
    assert result.of(NS, Op.UPSERT).applied == 2
    assert result.of(NS, Op.UPSERT).skipped == 2


async def test_an_isolated_direct_fallback_does_not_keep_the_direct_path_off(
    sink: Sink, pg_dsn: str, direct: list[bool]
) -> None:

    async def copy(first: int) -> None:
        await sink.apply(Batch([upsert(i, 10, origin=BACKFILL) for i in range(first, first + 5)]))

    # direct; a key already there (falls back); direct again at once; falls back twice
    # in a row, so the next batch is staged without trying; then direct.
    for first in (0, 3, 20, 23, 26, 40, 50):
        await copy(first)
    assert direct == [True, False, True, False, False, False, True]
    assert len(rows(pg_dsn)) == 5 + 3 + 5 + 3 + 3 + 5 + 5
