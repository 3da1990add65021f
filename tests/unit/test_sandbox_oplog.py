"""The sandbox oplog's cap: exactly the newest ``max_entries`` are held, whatever the
chunked trimming does underneath."""

from __future__ import annotations

from bson.timestamp import Timestamp

from ops.sandbox.oplog import Oplog


def test_capped_oplog_holds_exactly_the_newest_entries_and_knows_what_it_lost() -> None:
    oplog = Oplog(max_entries=1500)
    positions = []
    for n in range(1, 6001):
        entry = oplog.make(Timestamp(1_000, n), 0, "insert", "db", "c")
        oplog.append([entry])
        positions.append(entry.pos)
        held = positions[-1500:]
        assert oplog.held == len(held)
        assert oplog.next_seq == n
        assert oplog.base == n - len(held)
        if n > 1500:
            assert oplog.lost == positions[n - 1501]
    assert [e.pos for e in oplog.entries] == positions[-1500:]
    first = oplog.base
    assert oplog.get(first - 1) is None
    first_entry = oplog.get(first)
    assert first_entry is not None and first_entry.pos == positions[first]
    assert oplog.get(oplog.next_seq) is None
    assert oplog.seq_after(positions[first]) == first + 1
    assert oplog.seq_at_or_after(positions[first]) == first
    assert oplog.seq_after(positions[0]) == first  # before what is held: the oldest held
    assert oplog.history_lost(positions[first - 2])
    assert not oplog.history_lost(positions[first - 1])
