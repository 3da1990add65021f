"""Prometheus metrics of the change-stream tailer (default registry, base units).

Names carry the ``mongo2pg_stream_`` prefix; counters end in ``_total``. Labels are
bounded: ``stream`` (the checkpoint name), ``namespace`` (``db.coll`` of a mapped
collection) and ``operation`` (a change stream ``operationType``). A document id is
never a label. The lag gauge is refreshed by the tailer from the server's latest
operation time (DESIGN §3.5), so an idle source reads 0, not the age of the last event.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPLIED = Counter(
    "mongo2pg_stream_events_applied_total",
    "Change events applied to PostgreSQL, by target namespace and operation type.",
    ["namespace", "operation"],
)
BATCH_SIZE = Histogram(
    "mongo2pg_stream_batch_events",
    "Change events per applied batch (before coalescing by document key).",
    ["stream"],
    buckets=(0, 1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000),
)
APPLY_DURATION = Histogram(
    "mongo2pg_stream_batch_apply_duration_seconds",
    "Time to apply one batch and commit its checkpoint, in seconds.",
    ["stream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG = Gauge(
    "mongo2pg_stream_lag_seconds",
    "Server's latest operation time minus the last applied cluster time, in seconds.",
    ["stream"],
)
LAST_APPLIED = Gauge(
    "mongo2pg_stream_last_applied_cluster_time_seconds",
    "Cluster time (seconds since the epoch) up to which every change has been applied.",
    ["stream"],
)
RETRIES = Counter(
    "mongo2pg_stream_retries_total",
    "Transient failures of the tailer that were retried after a backoff.",
    ["stream"],
)
DEAD_LETTERS = Counter(
    "mongo2pg_stream_dead_letters_total",
    "Changes sent to the dead-letter table: unmappable documents, unreadable events.",
    ["namespace"],
)
UNKNOWN_EVENTS = Counter(
    "mongo2pg_stream_unknown_events_total",
    "Change events of an operation type the tailer does not handle (skipped, logged).",
    ["operation"],
)
HISTORY_LOST = Counter(
    "mongo2pg_stream_history_lost_total",
    "Times the change stream could not resume (codes 286/280/260 or an unknown token).",
    ["stream"],
)
DDL_EVENTS = Counter(
    "mongo2pg_stream_ddl_events_total",
    "drop / rename / dropDatabase / invalidate events seen on a watched namespace.",
    ["namespace", "operation"],
)
