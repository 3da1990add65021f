"""The PostgreSQL sink: the only code that writes data to the target (DESIGN §3, §6).

Every target row carries ``_m2p_version`` (the packed cluster time of the state it
holds). The sink applies a batch of versioned changes in ONE transaction:

* **Coalesce and map** (:mod:`cdc.sink.plan`, pure). Changes on the same document are
  folded with the version rule (newer wins; on equal versions a change event wins and a
  backfill row loses), so each key reaches the database once. Documents the mapping
  rejects become dead letters (raw BSON, namespace, ``_id``, version, reason) written in
  the same transaction; the batch goes on.
* **Stage** with binary COPY (asyncpg ``copy_records_to_table``) into session-local
  staging tables.
* **Merge** with one set-based, version-guarded statement per kind and table
  (:mod:`cdc.sink.statements`): a delete lands only when it beats the stored row or
  tombstone, removes the row and its child rows, and — while a read lease of its
  namespace is live (:mod:`cdc.sink.readers`) — leaves a tombstone in the control
  schema; an upsert lands only when it beats both the stored row and any tombstone
  (``ON CONFLICT … DO UPDATE … WHERE`` the stored version is older, or equal for stream
  rows), clears the tombstone, and replaces its child rows (rows of a shrunk array go).
  Rows end the same whatever the order in which batches, backfill chunks, retries and
  replays arrive; a key never has both a row and a tombstone, and a tombstone is never
  newer than its document's last delete.
* **Direct path**: a batch that only copies (backfill) into keys the target has never
  seen is COPYed straight into the target tables inside a savepoint; the primary key and
  a tombstone probe send anything else back to the staged merge.
* **Checkpoint**: the stream position (never moved backwards; a stream batch that
  starts before the stored position is refused, :class:`~cdc.errors.StreamFenced`) and
  the completed backfill chunk are written in the same transaction as the rows, so a crash leaves
  either all of a batch or none of it (exactly-once effect over at-least-once delivery).

The control schema is created by versioned migrations (:mod:`cdc.sink.migrations`);
target tables are created and expanded from the mapping's shapes on first sight
(:mod:`cdc.sink.ddl`). Writers of one table serialise only where they must: upsert-only
batches share a table lock, a batch that deletes takes it exclusively (see
:mod:`cdc.sink.sink`). Connection loss, serialization failures and deadlocks raise
:class:`cdc.errors.TargetUnavailable`: retry the same batch.
"""

from cdc.sink.migrations import LATEST as CONTROL_SCHEMA_VERSION
from cdc.sink.migrations import migrate, migrate_sync
from cdc.sink.plan import ApplyResult, DeadLetter, OpCounts
from cdc.sink.sink import Sink

__all__ = [
    "CONTROL_SCHEMA_VERSION",
    "ApplyResult",
    "DeadLetter",
    "OpCounts",
    "Sink",
    "migrate",
    "migrate_sync",
]
