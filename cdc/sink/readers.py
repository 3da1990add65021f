"""Read leases: when a delete must leave a tombstone (DESIGN §3.1).

A tombstone exists so that no write older than a delete brings the row back. Only a
*read* can produce such a write: a backfill chunk, a targeted re-copy or a resync copy
is labelled with the cluster time at which its read started and written later, so a
document it saw may have been deleted — and that delete applied — in between. The
change stream itself cannot: it is applied in order, each batch with its checkpoint,
so a replay after a crash starts after the last committed delete, and an event older
than a delete (replayed from an earlier position) is always followed by that delete
again. So a delete needs its tombstone exactly while some read of its namespace may
still write, and every such read holds a **read lease**, a row of the control table
``readers``:

1. **Open before the label.** The lease commits before the read takes its label
   (:func:`backfill.reader.read_label`, a majority read's operation time). Any delete
   the sink applied before the lease was visible had been read from the change stream,
   so it was majority-committed before the label was taken: the label is at or after
   it, the read cannot see the deleted document, and no tombstone is needed for it.
   The reader does not rely on the source's majority point moving forward only (after
   an election a new primary's may lag): it reads what the streams have committed once
   the batches in flight on the table are done (:meth:`Sink.applied_time`, under the
   table's shared lock) and asks for its label and its snapshot at or after that
   (``readConcern.afterClusterTime``).
2. **Deletes look for live leases.** A batch with deletes holds its tables' exclusive
   advisory lock; then it reads the live leases of its namespaces (a statement of its
   own, so its snapshot is taken after the lock was granted). Where one is live, the
   deletes leave tombstones as before; where none is, they only delete rows.
3. **Writes renew, or are refused.** A batch carrying backfill changes names its lease
   (:attr:`cdc.batch.Batch.reader`). Holding its tables' advisory locks (shared for
   upserts), it renews the lease (``expires_at = clock_timestamp() + lease``) only if it
   has not expired, else it writes nothing (:class:`~cdc.errors.ReadLeaseLost`).
   Because a delete batch and a write of the same table exclude each other through
   that lock, either the delete saw the lease live (and left tombstones), or it found
   the lease expired — and removed it in the same statement, so every later write
   under it is refused, even if PostgreSQL's clock stepped back meanwhile. Leases of
   crashed readers are also removed when the next lease opens.
4. **Kept alive while reading, closed after the last write.** A reader renews its lease
   every quarter of its length while it reads (a throttled or slow read may pause
   longer than a lease between two writes), and removes it once its last batch has
   committed; until then its namespace's deletes keep leaving tombstones.
5. **One applier of the stream at a time.** The stream's own events are safe only when
   applied in order. Several daemons sharing a control schema each run a tailer, so a
   stream batch names the checkpoint it continues from (:attr:`cdc.batch.Batch.after`)
   and the sink refuses it (:class:`~cdc.errors.StreamFenced`, nothing written) when
   the stream's stored checkpoint, locked in the batch's transaction, is already past
   it: the lagging tailer goes on from the stored checkpoint instead of applying events
   older than deletes another one applied.

Tombstones left earlier stay valid: they only ever make a write lose that would have
been older than a delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True, slots=True)
class ReaderSql:
    """The statements of the read leases of one control schema."""

    open: str
    """``$1`` namespace, ``$2`` holder, ``$3`` lease seconds: the new lease's id (also
    removes expired leases)."""
    close: str
    renew: str
    """``$1`` lease id: ``UPDATE 1`` if it was live and is renewed, else ``UPDATE 0``."""
    live: str
    """``$1`` namespaces (text[]): those among them with a live lease; removes their
    expired leases."""

    def renew_literal(self, reader: int) -> str:
        """:attr:`renew` with the id as a literal, to run after the lock statement in
        the same round trip (an int, so nothing is pasted but digits)."""
        return self.renew.replace("$1", str(int(reader)))


def build(control_schema: str) -> ReaderSql:
    t = sql.Identifier(control_schema, "readers")

    def q(text: str) -> str:
        return sql.SQL(text).format(t=t).as_string(None)

    return ReaderSql(
        open=q("WITH gone AS (DELETE FROM {t} WHERE expires_at <= clock_timestamp())"
               " INSERT INTO {t} (namespace, holder, lease, expires_at)"
               " VALUES ($1, $2, make_interval(secs => $3),"
               " clock_timestamp() + make_interval(secs => $3)) RETURNING id"),
        close=q("DELETE FROM {t} WHERE id = $1"),
        renew=q("UPDATE {t} SET expires_at = clock_timestamp() + lease"
                " WHERE id = $1 AND expires_at > clock_timestamp()"),
        # One clock reading decides; the leases found expired are removed there and
        # then, so no later renewal can revive one (whatever PostgreSQL's clock does).
        live=q("WITH now AS (SELECT clock_timestamp() AS t),"
               " dead AS (DELETE FROM {t} r USING now WHERE r.namespace = ANY($1::text[])"
               " AND r.expires_at <= now.t)"
               " SELECT DISTINCT r.namespace FROM {t} r, now"
               " WHERE r.namespace = ANY($1::text[]) AND r.expires_at > now.t"),
    )
