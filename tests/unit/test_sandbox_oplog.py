"""The sandbox's capped oplog: what it keeps, what it reports lost, and its cost."""

from __future__ import annotations

from ops.sandbox.oplog import Oplog


def _append(oplog: Oplog, count: int) -> None:
    for _ in range(count):
        ts = oplog.clock.tick()
        oplog.append([oplog.make(ts, 0, "i", "db", "c")])


def test_small_oplog_trims_exactly_and_reports_the_newest_dropped_position() -> None:
    oplog = Oplog(5)
    _append(oplog, 5)
    second = oplog.positions[1]
    _append(oplog, 2)
    assert len(oplog.entries) == 5
    assert oplog.base == 2
    assert oplog.lost == second
    assert [e.seq for e in oplog.entries] == list(range(2, 7))
    assert oplog.get(1) is None
    assert oplog.get(2) is oplog.entries[0]


def test_large_oplog_trims_in_steps_and_stays_consistent() -> None:
    oplog = Oplog(4096)
    _append(oplog, 4096 + 256)  # within the slack of a sixteenth: nothing dropped yet
    newest_to_drop = oplog.positions[256]
    assert len(oplog.entries) == 4096 + 256
    assert oplog.base == 0
    _append(oplog, 1)  # past the slack: back to max_entries at once
    assert len(oplog.entries) == 4096
    assert oplog.base == 257
    assert oplog.lost == newest_to_drop
    assert oplog.seq_after(oplog.lost) == oplog.base
    assert [e.seq for e in oplog.entries[:3]] == [257, 258, 259]
    assert len(oplog.positions) == len(oplog.entries)
