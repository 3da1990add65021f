"""Chunk planning: cut a collection into ``_id`` intervals of about the target size.

Mechanism: cheap size estimates (``estimatedDocumentCount`` and ``collStats`` average
object size) give the number of chunks; ``$sample`` draws ``samples_per_chunk`` ``_id``
values per chunk; the values are ordered in BSON order (:mod:`backfill.bsonorder`) and
every ``samples_per_chunk``-th becomes a split point. The chunks are then the
consecutive intervals ``[None, s1), [s1, s2), … [sn, None)`` of BSON order, so every
document — of any ``_id`` type, including types no sample hit — falls in exactly one
chunk. The pure part (:func:`split_points`, :func:`chunks_from_splits`) is separate from
the reads (:func:`plan_collection`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from backfill.bsonorder import sort_key, splittable
from backfill.config import BackfillConfig
from cdc.types import Namespace


class ChunkSpec(msgspec.Struct, frozen=True):
    """One planned interval ``[lower, upper)`` of a collection; ``None`` = open end."""

    namespace: Namespace
    seq: int
    lower: Any | None
    upper: Any | None


class SizeEstimate(msgspec.Struct, frozen=True):
    documents: int
    avg_bytes: float


def chunk_count(estimate: SizeEstimate, config: BackfillConfig) -> int:
    """Chunks for a collection: the largest of the document- and byte-based counts and
    eight per worker (when the collection has that many batches' worth): small chunks at
    the end keep every worker busy until the last one, instead of one worker copying a
    large last chunk alone."""
    if estimate.documents <= 0:
        return 1
    by_docs = math.ceil(estimate.documents / max(1, config.chunk_documents))
    by_bytes = math.ceil(estimate.documents * estimate.avg_bytes / max(1, config.chunk_bytes))
    # Enough chunks to keep every worker busy, as long as a chunk still fills a batch.
    parallel = min(8 * config.workers, estimate.documents // max(1, config.batch_size))
    wanted = max(by_docs, by_bytes, parallel)
    return max(1, min(config.max_chunks_per_collection, wanted, estimate.documents))


def split_points(samples: Sequence[Any], chunks: int) -> list[Any]:
    """At most ``chunks - 1`` strictly increasing split points chosen among ``samples``.

    Values whose order we do not reproduce exactly are dropped (their bracket stays
    inside one chunk); duplicates (``1`` and ``1.0`` included) collapse.
    """
    if chunks <= 1:
        return []
    usable = sorted((v for v in samples if splittable(v)), key=sort_key)
    unique: list[Any] = []
    last: tuple[int, Any] | None = None
    for v in usable:
        k = sort_key(v)
        if k != last:
            unique.append(v)
            last = k
    if not unique:
        return []
    wanted = min(chunks - 1, len(unique))
    step = len(unique) / (wanted + 1)
    points: list[Any] = []
    last_index = -1
    for j in range(1, wanted + 1):
        index = min(len(unique) - 1, int(j * step))
        if index > last_index:
            points.append(unique[index])
            last_index = index
    return points


def chunks_from_splits(namespace: Namespace, points: Sequence[Any]) -> list[ChunkSpec]:
    """Consecutive intervals covering the whole BSON order."""
    bounds: list[Any | None] = [None, *points, None]
    return [
        ChunkSpec(namespace, seq, bounds[seq], bounds[seq + 1]) for seq in range(len(points) + 1)
    ]


async def estimate_size(client: AsyncMongoClient[Any], namespace: Namespace) -> SizeEstimate:
    """Document count and average size from metadata (no collection scan)."""
    coll = client[namespace.db][namespace.coll]
    try:
        documents = int(await coll.estimated_document_count())
    except OperationFailure:
        documents = 0
    avg = 0.0
    try:
        stats = await client[namespace.db].command("collStats", namespace.coll)
        avg = float(stats.get("avgObjSize") or 0.0)
        documents = max(documents, int(stats.get("count") or 0))
    except OperationFailure:
        pass
    return SizeEstimate(documents, avg)


async def sample_ids(client: AsyncMongoClient[Any], namespace: Namespace, size: int) -> list[Any]:
    """``size`` random ``_id`` values (``$sample`` reads a random subset cheaply)."""
    if size <= 0:
        return []
    coll = client[namespace.db][namespace.coll]
    cursor = await coll.aggregate([{"$sample": {"size": size}}, {"$project": {"_id": 1}}])
    return [doc["_id"] async for doc in cursor]


async def plan_collection(
    client: AsyncMongoClient[Any], namespace: Namespace, config: BackfillConfig,
    source: Namespace | None = None,
) -> tuple[list[ChunkSpec], SizeEstimate]:
    """Chunks of ``namespace`` (its documents read from ``source`` when given: its
    collection's name now), and the estimate they were planned from."""
    read = source or namespace
    estimate = await estimate_size(client, read)
    n = chunk_count(estimate, config)
    samples = await sample_ids(client, read, n * config.samples_per_chunk) if n > 1 else []
    return chunks_from_splits(namespace, split_points(samples, n)), estimate
