"""Turn a :class:`~cdc.batch.Batch` into per-table row sets: coalesce, map, dead-letter.

Pure and synchronous (no I/O), so it is unit-tested without a database.


Coalescing applies the sink's version rule inside the batch: walking the changes in
stream order, a change replaces the current candidate for its document when its
version is newer, or equal and it comes from the stream (:class:`~cdc.batch.Origin`:
a change event wins a tie, a backfill row loses it). Folding a batch this way and then
applying only the winner against the stored state gives the same result as applying
every change one by one, so the database sees at most one row per key and table.
Candidates are first grouped by the raw ``_id`` bytes (no mapping needed); only the
winners are mapped — lazily, while the sink streams them into COPY — and grouped again
by the mapped key (distinct BSON ids that the mapping encodes alike, e.g. the same
number as int32 and double, are one row).

When the mapping has a C path (``Mapper.copy_rows``) and it writes every upsert of a
namespace's batch under distinct keys, the sink COPYs its binary streams instead
(:meth:`NamespacePlan.fast_rows`); the version rule then has nothing left to decide
inside the batch.

A document the mapping rejects (:class:`~cdc.errors.DataError`) becomes a dead letter
carrying its raw BSON, id, version and the reason; the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdc.batch import Batch, Change, Op, Origin
from cdc.errors import DataError, InvariantError
from cdc.mapping.model import CopyRows, Mapper
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
    """Net changes of one namespace in one batch; upserts are mapped lazily.

    :meth:`root_records` maps while the caller streams its output into COPY, so the
    mapping (client CPU) overlaps PostgreSQL parsing the rows already sent. A document
    whose mapped key turns out to repeat one staged earlier is resolved with the version
    rule there and then; the loser's position lands in ``losers`` so the caller removes
    it from staging (``_m2p_seq``) — a rare case: distinct BSON ids, one key.
    """

    namespace: Namespace
    mapper: Mapper
    root_name: str
    upserts: list[tuple[int, Change]] = field(default_factory=list)
    """(position in batch, change) of the upserts that won pass 1."""
    deletes: list[tuple[bytes, int, bool, int]] = field(default_factory=list)
    """(key, version, from_stream, position) per deleted document."""
    child_records: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    """Child rows + (version,), per child table, filled by root_records."""
    losers: list[int] = field(default_factory=list)
    """Positions of staged changes that a later-mapped change on the same key beat."""
    staged_upserts: int = 0
    staged_deletes: int = 0
    all_new: bool = True
    """Every change of this namespace in the batch came from the backfill or is a
    stream insert (:attr:`Change.fresh`): the direct path is worth a try."""
    direct: bool = False
    """The upserts went straight into the target (see ``Sink._direct``)."""
    direct_tails: list[tuple[bool, int]] = field(default_factory=list)
    _seen: dict[bytes, tuple[int, Change]] = field(default_factory=dict)
    _child_spans: list[tuple[int, str, int, int]] = field(default_factory=list)
    """(position, child table, start, end) of each document's rows in child_records."""

    def _claim(self, key: bytes, pos: int, change: Change, result: ApplyResult) -> bool:
        """Whether ``change`` is the key's winner so far; records what it displaces."""
        prev = self._seen.get(key)
        if prev is not None:
            later, earlier = ((pos, change), prev) if pos > prev[0] else (prev, (pos, change))
            winner = later if _beats(later[1], earlier[1]) else earlier
            loser = earlier if winner is later else later
            result.of(self.namespace, loser[1].op).skipped += 1
            if winner[0] != pos:
                return False
            self.losers.append(prev[0])
            if prev[1].op is Op.UPSERT:
                self.staged_upserts -= 1
            else:
                self.staged_deletes -= 1
        self._seen[key] = (pos, change)
        return True

    def root_records(self, dead: list[DeadLetter], result: ApplyResult, *,
                     direct: bool = False) -> Iterator[tuple[Any, ...]]:
        """Root rows + (version, from_stream, position) of the upserts, mapped on demand.

        With ``direct``, root rows + (version,) — the target's own columns — and the
        (from_stream, position) of each row go to :attr:`direct_tails` instead, so a
        fallback can rebuild the staging records (:meth:`staging_records`)."""
        ns = self.namespace
        root_name = self.root_name
        children = self.child_records
        spans = self._child_spans
        tails = self.direct_tails
        for pos, change in self.upserts:
            doc = change.doc
            if doc is None:
                raise InvariantError(f"upsert without a document in {ns}")
            try:
                mapped = self.mapper.map_document(doc)
            except DataError as exc:
                dead.append(DeadLetter(str(ns), change.id_bson, change.version, doc, str(exc)))
                result.of(ns, Op.UPSERT).dead_lettered += 1
                continue
            if not self._claim(mapped.key, pos, change, result):
                continue
            rows = mapped.rows
            root_rows = rows.get(root_name)
            if root_rows is None or len(root_rows) != 1:
                raise InvariantError(f"{ns}: the mapping must give exactly one {root_name} row")
            version = change.version
            self.staged_upserts += 1
            if direct:
                tails.append((change.origin is Origin.STREAM, pos))
                yield root_rows[0] + (version,)
            else:
                yield root_rows[0] + (version, change.origin is Origin.STREAM, pos)
            if len(rows) > 1:
                tail = (version,)
                for table, table_rows in rows.items():
                    if table == root_name or not table_rows:
                        continue
                    dest = children.get(table)
                    if dest is None:
                        dest = children[table] = []
                    start = len(dest)
                    dest.extend(r + tail for r in table_rows)
                    spans.append((pos, table, start, len(dest)))

    def fast_rows(self, *, staged: bool) -> CopyRows | None:
        """The upserts as binary COPY streams written by the mapping's C path
        (``Mapper.copy_rows``), or None when the rows must come from :meth:`root_records`.

        All or nothing: the fast path is taken only when it wrote every document and
        their keys are distinct from each other and from this batch's deletes, so the
        version rule inside the batch has nothing left to decide (``_claim`` would keep
        every one of them). Anything else — a document only the Python mapping writes or
        dead-letters, two BSON ids with one key — takes the Python path for the whole
        namespace's batch, which decides exactly as before. ``staged`` adds the staging
        columns (from_stream, position) to the root rows.
        """
        copy_rows: Callable[..., CopyRows | None] | None = getattr(self.mapper, "copy_rows",
                                                                   None)
        if copy_rows is None or not self.upserts:
            return None
        raws = [c.doc for _, c in self.upserts]
        if None in raws:
            return None  # root_records raises the InvariantError
        versions = [c.version for _, c in self.upserts]
        if staged:
            stream = Origin.STREAM
            rows = copy_rows(raws, versions, [c.origin is stream for _, c in self.upserts],
                             [pos for pos, _ in self.upserts])
        else:
            rows = copy_rows(raws, versions)
        if rows is None or rows.left:
            return None
        keys = rows.keys
        if len(set(keys)) != len(keys) or (self._seen and not self._seen.keys().isdisjoint(keys)):
            return None
        self.staged_upserts += len(keys)
        return rows

    def delete_arrays(self) -> list[tuple[list[bytes], list[int], bool]]:
        """Keys and versions of the deletes still standing (an upsert mapped later may
        have displaced one: :attr:`losers`), one group per origin with its from-stream
        flag, for the delete statement (a batch of one origin, the usual case, is one
        group: the flag is a scalar, not an array of one value per key)."""
        gone = set(self.losers)
        kept = [d for d in self.deletes if d[3] not in gone] if gone else self.deletes
        groups: list[tuple[list[bytes], list[int], bool]] = []
        for stream in (True, False):
            mine = [d for d in kept if d[2] is stream]
            if len(mine) == len(kept):  # all of one origin: no copy
                return [([d[0] for d in kept], [d[1] for d in kept], stream)] if kept else []
            if mine:
                groups.append(([d[0] for d in mine], [d[1] for d in mine], stream))
        return groups

    def staging_records(self, direct_rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The staging form of rows :meth:`root_records` gave with ``direct``."""
        return [r + t for r, t in zip(direct_rows, self.direct_tails, strict=True)]

    def children_without_losers(self, table: str) -> list[tuple[Any, ...]]:
        """Child rows + (version,) of ``table``, without those of displaced documents."""
        rows = self.child_records.get(table, [])
        if not self.losers:
            return rows
        gone = set(self.losers)
        drop = [(a, b) for pos, t, a, b in self._child_spans if t == table and pos in gone]
        if not drop:
            return rows
        keep: list[tuple[Any, ...]] = []
        at = 0
        for a, b in drop:
            keep.extend(rows[at:a])
            at = b
        keep.extend(rows[at:])
        return keep


@dataclass(slots=True)
class Plan:
    namespaces: dict[Namespace, NamespacePlan]
    dead_letters: list[DeadLetter]
    result: ApplyResult
    backfill: bool = False
    """A backfill change is left after coalescing: it may write, so the batch must
    carry a read lease (:mod:`cdc.sink.readers`)."""


def _beats(later: Change, earlier: Change) -> bool:
    """Whether ``later`` (after ``earlier`` in stream order) replaces it."""
    return later.version > earlier.version or (
        later.version == earlier.version and later.origin is Origin.STREAM
    )


Groups = dict[Namespace, list[tuple[int, Change]]]


def _coalesce(batch: Batch, result: ApplyResult) -> Groups:
    """(position, change) of each raw id's winner, by namespace (a batch rarely holds
    more than one), in the order of each id's first appearance."""
    groups: dict[Namespace, dict[bytes, tuple[int, Change]]] = {}
    last: Namespace | None = None
    first: dict[bytes, tuple[int, Change]] = {}
    for pos, change in enumerate(batch.changes):
        if change.namespace is not last:
            last = change.namespace
            first = groups.setdefault(last, {})
        k = change.id_bson
        prev = first.get(k)
        if prev is None:
            first[k] = (pos, change)
        elif _beats(change, prev[1]):
            first[k] = (pos, change)
            result.of(change.namespace, prev[1].op).skipped += 1
        else:
            result.of(change.namespace, change.op).skipped += 1
    return {ns: list(winners.values()) for ns, winners in groups.items()}


def _by_namespace(changes: list[Change]) -> Groups:
    """(position, change) by namespace, for a batch whose raw ids are distinct already."""
    groups: Groups = {}
    last: Namespace | None = None
    into: list[tuple[int, Change]] = []
    for pos, change in enumerate(changes):
        if change.namespace is not last:
            last = change.namespace
            into = groups.setdefault(last, [])
        into.append((pos, change))
    return groups


def plan_batch(batch: Batch, mapper_of: Callable[[Namespace], Mapper]) -> Plan:
    """Coalesce ``batch`` by raw id and map its deletes; upserts map in root_records."""
    result = ApplyResult()
    groups = _by_namespace(batch.changes) if batch.coalesced else _coalesce(batch, result)

    dead: list[DeadLetter] = []
    plans: dict[Namespace, NamespacePlan] = {}
    # Enum members bound once: a lookup on an Enum class is slow next to this loop's work.
    upsert, backfill, stream = Op.UPSERT, Origin.BACKFILL, Origin.STREAM
    has_backfill = False
    for ns, winners in groups.items():
        mapper = mapper_of(ns)
        plan = plans[ns] = NamespacePlan(ns, mapper, mapper.tables()[0].name)
        upserts, deletes, seen, map_key = plan.upserts, plan.deletes, plan._seen, mapper.map_key
        all_new = True
        for pos, change in winners:
            if change.origin is backfill:
                has_backfill = True
            elif not change.fresh:
                all_new = False
            if change.op is upsert:
                upserts.append((pos, change))
                continue
            try:
                key = map_key(change.id_bson)
            except DataError as exc:
                dead.append(DeadLetter(str(ns), change.id_bson, change.version, None,
                                       str(exc)))
                result.of(ns, Op.DELETE).dead_lettered += 1
                continue
            # _claim, inlined for the usual case: the first change seen with this key.
            if key in seen and not plan._claim(key, pos, change, result):
                continue
            seen[key] = (pos, change)
            deletes.append((key, change.version, change.origin is stream, pos))
        plan.all_new = all_new
    # Deletes that a later delete of the same key displaced never reach staging.
    for plan in plans.values():
        if plan.losers:
            gone = set(plan.losers)
            plan.deletes = [d for d in plan.deletes if d[3] not in gone]
            plan.losers.clear()
        plan.staged_deletes = len(plan.deletes)
    return Plan(plans, dead, result, has_backfill)
