"""Turn a :class:`~cdc.batch.Batch` into per-table row sets: coalesce, map, dead-letter.

Pure and synchronous (no I/O), so it is unit-tested without a database.

Coalescing applies the sink's version rule inside the batch: walking the changes in
stream order, a change replaces the current candidate for its document when its
version is newer, or equal and it comes from the stream (:class:`~cdc.batch.Origin`:
a change event wins a tie, a backfill row loses it). Folding a batch this way and then
applying only the winner against the stored state gives the same result as applying
every change one by one, so the database sees at most one row per key and table.
Candidates are first grouped by the raw ``_id`` bytes (no mapping needed), then only
the winners are mapped, and grouped again by the mapped key (distinct BSON ids that the
mapping encodes alike, e.g. the same number as int32 and int64, are one row).

A document the mapping rejects (:class:`~cdc.errors.DataError`) becomes a dead letter
carrying its raw BSON, id, version and the reason; the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdc.batch import Batch, Change, Op, Origin
from cdc.errors import DataError, InvariantError
from cdc.mapping.model import Mapper
from cdc.types import Namespace


class OpCounts(msgspec.Struct):
    """What happened to the changes of one namespace and operation."""

    applied: int = 0
    """Reached the target (the version guard let them through)."""
    skipped: int = 0
    """Superseded inside the batch or older than what the target holds."""
    dead_lettered: int = 0
    """Could not be mapped; stored in the dead-letter table."""


class ApplyResult(msgspec.Struct):
    """Counts of one applied batch, per namespace (``db.coll``) and operation."""

    counts: dict[str, dict[Op, OpCounts]] = msgspec.field(default_factory=dict)

    def of(self, namespace: Namespace | str, op: Op) -> OpCounts:
        per_ns = self.counts.setdefault(str(namespace), {})
        found = per_ns.get(op)
        if found is None:
            found = per_ns[op] = OpCounts()
        return found

    def total(self, what: str) -> int:
        """Sum of ``applied``, ``skipped`` or ``dead_lettered`` over everything."""
        return sum(getattr(c, what) for per in self.counts.values() for c in per.values())


class DeadLetter(msgspec.Struct, frozen=True):
    namespace: str
    id_bson: bytes
    version: int
    raw: bytes | None
    reason: str


@dataclass(slots=True)
class NamespacePlan:
    """Net changes of one namespace in one batch, as COPY records."""

    namespace: Namespace
    mapper: Mapper
    root_name: str
    root_records: list[tuple[Any, ...]] = field(default_factory=list)
    """Root rows + (version, from_stream)."""
    child_records: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    """Child rows + (version,), per child table name, for the documents upserted."""
    deletes: list[tuple[bytes, int, bool]] = field(default_factory=list)
    """(key, version, from_stream) per deleted document."""


@dataclass(slots=True)
class Plan:
    namespaces: dict[Namespace, NamespacePlan]
    dead_letters: list[DeadLetter]
    result: ApplyResult


def _beats(later: Change, earlier: Change) -> bool:
    """Whether ``later`` (after ``earlier`` in stream order) replaces it."""
    return later.version > earlier.version or (
        later.version == earlier.version and later.origin is Origin.STREAM
    )


def plan_batch(batch: Batch, mapper_of: Any) -> Plan:
    """Coalesce and map ``batch``; ``mapper_of(namespace)`` returns the namespace's Mapper."""
    result = ApplyResult()
    # Pass 1: one candidate per (namespace, raw id), in stream order.
    first: dict[tuple[Namespace, bytes], tuple[int, Change]] = {}
    for pos, change in enumerate(batch.changes):
        k = (change.namespace, change.id_bson)
        prev = first.get(k)
        if prev is None:
            first[k] = (pos, change)
        elif _beats(change, prev[1]):
            first[k] = (pos, change)
            result.of(change.namespace, prev[1].op).skipped += 1
        else:
            result.of(change.namespace, change.op).skipped += 1

    # Pass 2: map the candidates, then one winner per (namespace, mapped key).
    dead: list[DeadLetter] = []
    winners: dict[tuple[Namespace, bytes], tuple[int, Change, Any]] = {}
    mappers: dict[Namespace, Mapper] = {}
    for pos, change in first.values():
        ns = change.namespace
        mapper = mappers.get(ns)
        if mapper is None:
            mapper = mappers[ns] = mapper_of(ns)
        mapped: Any
        try:
            if change.op is Op.UPSERT:
                if change.doc is None:
                    raise InvariantError(f"upsert without a document in {ns}")
                mapped = mapper.map_document(change.doc)
                key = mapped.key
            else:
                mapped = None
                key = mapper.map_key(change.id_bson)
        except DataError as exc:
            dead.append(
                DeadLetter(str(ns), change.id_bson, change.version, change.doc, str(exc))
            )
            result.of(ns, change.op).dead_lettered += 1
            continue
        k = (ns, key)
        prev2 = winners.get(k)
        if prev2 is None:
            winners[k] = (pos, change, mapped)
            continue
        later, earlier = (prev2, (pos, change, mapped)) if prev2[0] > pos else (
            (pos, change, mapped), prev2)
        keep, drop = (later, earlier) if _beats(later[1], earlier[1]) else (earlier, later)
        winners[k] = keep
        result.of(ns, drop[1].op).skipped += 1

    plans: dict[Namespace, NamespacePlan] = {}
    for (ns, key), (_pos, change, mapped) in winners.items():
        plan = plans.get(ns)
        if plan is None:
            mapper = mappers[ns]
            plan = plans[ns] = NamespacePlan(ns, mapper, mapper.tables()[0].name)
        stream = change.origin is Origin.STREAM
        if mapped is None:
            plan.deletes.append((key, change.version, stream))
            continue
        rows = mapped.rows
        version = change.version
        tail = (version,)
        root_name = plan.root_name
        root_rows = rows.get(root_name)
        if root_rows is None or len(root_rows) != 1:
            raise InvariantError(f"{ns}: the mapping must give exactly one {root_name} row")
        plan.root_records.append(root_rows[0] + (version, stream))
        for table, table_rows in rows.items():
            if table == root_name or not table_rows:
                continue
            dest = plan.child_records.get(table)
            if dest is None:
                dest = plan.child_records[table] = []
            dest.extend(r + tail for r in table_rows)
    return Plan(plans, dead, result)

