"""Backfill progress per collection: documents, bytes, ratio, rate and ETA.

The totals come from the planner's size estimates (an estimate: the ratio is clamped to
[0, 1] and reaches 1 exactly when every chunk of the collection is done). The rate is
an exponentially weighted moving average of documents per second over the refresh
interval, so the ETA does not jump with every batch. :class:`ProgressTracker` is pure
(time passed in); :func:`export` writes it to Prometheus gauges and
:func:`render_line` to one terminal line.
"""

from __future__ import annotations

import math

import msgspec
from prometheus_client import Counter, Gauge

DOCUMENTS = Counter(
    "mongo2pg_backfill_documents_total",
    "Documents copied by the backfill of this process.", ["namespace"])
BYTES = Counter(
    "mongo2pg_backfill_bytes_total",
    "Raw BSON bytes copied by the backfill of this process.", ["namespace"])
ESTIMATED = Gauge(
    "mongo2pg_backfill_estimated_documents",
    "Documents the collection held when it was planned (an estimate).", ["namespace"])
COPIED = Gauge(
    "mongo2pg_backfill_copied_documents",
    "Documents copied so far by all processes (from the chunk table).", ["namespace"])
RATIO = Gauge(
    "mongo2pg_backfill_progress_ratio",
    "Share of the collection copied, 0..1 (1 once every chunk is done).", ["namespace"])
ETA = Gauge(
    "mongo2pg_backfill_eta_seconds",
    "Estimated seconds until the collection's backfill is done (NaN when unknown).",
    ["namespace"])
CHUNKS = Gauge(
    "mongo2pg_backfill_chunks",
    "Chunks per status (pending, running, done).", ["namespace", "status"])


class CollectionProgress(msgspec.Struct):
    namespace: str
    estimated_documents: int = 0
    copied_documents: int = 0
    copied_bytes: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_running: int = 0
    rate: float = 0.0
    """Documents per second (EWMA)."""
    _last_copied: int = 0
    _last_time: float | None = None

    @property
    def done(self) -> bool:
        return self.chunks_total > 0 and self.chunks_done >= self.chunks_total

    @property
    def ratio(self) -> float:
        if self.done:
            return 1.0
        if self.estimated_documents <= 0:
            return 0.0 if self.chunks_total == 0 else self.chunks_done / self.chunks_total
        return max(0.0, min(0.999, self.copied_documents / self.estimated_documents))

    @property
    def eta_seconds(self) -> float:
        if self.done:
            return 0.0
        remaining = max(0, self.estimated_documents - self.copied_documents)
        if self.rate <= 0:
            return math.nan
        return remaining / self.rate


class ProgressTracker:
    """Folds chunk-table snapshots into per-collection progress; ``alpha`` weights the
    newest rate sample in the moving average."""

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self.collections: dict[str, CollectionProgress] = {}

    def update(self, namespace: str, *, estimated: int, copied: int, copied_bytes: int,
               total: int, done: int, running: int, now: float) -> CollectionProgress:
        p = self.collections.setdefault(namespace, CollectionProgress(namespace))
        p.estimated_documents = max(estimated, copied)
        p.copied_documents = copied
        p.copied_bytes = copied_bytes
        p.chunks_total, p.chunks_done, p.chunks_running = total, done, running
        if p._last_time is not None and now > p._last_time:
            sample = max(0, copied - p._last_copied) / (now - p._last_time)
            p.rate = sample if p.rate == 0 else self.alpha * sample + (1 - self.alpha) * p.rate
        p._last_copied, p._last_time = copied, now
        return p

    def totals(self) -> CollectionProgress:
        t = CollectionProgress("all")
        for p in self.collections.values():
            t.estimated_documents += p.estimated_documents
            t.copied_documents += p.copied_documents
            t.copied_bytes += p.copied_bytes
            t.chunks_total += p.chunks_total
            t.chunks_done += p.chunks_done
            t.chunks_running += p.chunks_running
            t.rate += p.rate
        return t


def export(tracker: ProgressTracker) -> None:
    for ns, p in tracker.collections.items():
        ESTIMATED.labels(ns).set(p.estimated_documents)
        COPIED.labels(ns).set(p.copied_documents)
        RATIO.labels(ns).set(p.ratio)
        ETA.labels(ns).set(p.eta_seconds)
        CHUNKS.labels(ns, "done").set(p.chunks_done)
        CHUNKS.labels(ns, "running").set(p.chunks_running)
        CHUNKS.labels(ns, "pending").set(p.chunks_total - p.chunks_done - p.chunks_running)


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def render_line(tracker: ProgressTracker) -> str:
    """``backfill 42% 84.0k/200.0k docs 80.1MB 12.3k docs/s ETA 9s chunks 17/40``."""
    t = tracker.totals()
    eta_s = t.eta_seconds
    eta = "done" if t.done else ("?" if math.isnan(eta_s) else f"{eta_s:.0f}s")
    return (f"backfill {t.ratio * 100:3.0f}% {_human(t.copied_documents)}/"
            f"{_human(t.estimated_documents)} docs {_human(t.copied_bytes)}B "
            f"{_human(t.rate)} docs/s ETA {eta} chunks {t.chunks_done}/{t.chunks_total}")
