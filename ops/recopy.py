"""``mongo2pg recopy``: copy a namespace, or some of its documents, again — at any time.

A re-copy is an ordinary backfill write: every row is labelled with the cluster time at
which its read started and goes through the sink's version guard, so it can run beside a
live daemon (whose stream changes, newer, win) and can be interrupted and repeated. It
runs in its own process against the same source, target and control schema:

* ``--namespace db.coll`` alone: the namespace's backfill chunks are forgotten and
  planned again, then copied (by this process, and by any daemon still backfilling, which
  shares chunks through their leases). If this process stops early, the next
  ``mongo2pg run`` finishes the remaining chunks.
* with ``--id`` (repeatable, Extended JSON: ``42``, ``'"abc"'``,
  ``'{"$oid": "…"}'``) or ``--ids-file`` (one Extended JSON value per line): just those
  documents are read by ``_id`` and written again; an ``_id`` that no longer exists is
  written as a delete at the read label (a newer insert still wins).

The daemon itself uses the same code paths after history loss (DESIGN §3; phase
``resync_required``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bson import json_util
from pymongo import AsyncMongoClient

from backfill.chunks import ChunkStore
from backfill.worker import Backfill, default_owner
from cdc.errors import ConfigError
from cdc.mapping import resolve
from cdc.sink import Sink
from cdc.state import MAIN_STREAM, StreamState
from cdc.types import ZERO_TIME, Namespace
from ops.config import Config

log = logging.getLogger(__name__)


def parse_ids(values: Sequence[str], key: str) -> list[Any]:
    """``_id`` values from Extended JSON texts; a bad one is a ConfigError naming ``key``."""
    ids: list[Any] = []
    for n, text in enumerate(values):
        try:
            ids.append(json_util.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"entry {n + 1} is not an Extended JSON value ({exc})",
                              key=key) from None
    return ids


def read_ids_file(path: str) -> list[Any]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="--ids-file") from None
    return parse_ids([line for line in lines if line.strip()], "--ids-file")


def check_namespace(namespace: str) -> Namespace:
    try:
        ns = Namespace.parse(namespace)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--namespace") from None
    if ns.coll == "*":
        raise ConfigError("name one collection, not a pattern", key="--namespace")
    return ns


async def recopy(config: Config, namespace: Namespace, ids: list[Any] | None) -> int:
    """Copy ``namespace`` again (all of it when ``ids`` is None); returns documents copied."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(config.source.uri, appname="mongo2pg")
    schema = config.target.control_schema
    sink = await Sink.open(config.target.dsn, schema, lambda ns: resolve(config.mapping, ns),
                           max_size=max(2, config.backfill.workers + 2))
    store = await ChunkStore.connect(config.target.dsn, schema, default_owner(),
                                     config.backfill.lease_seconds)
    try:
        # The stream's DDL decisions say which table the name feeds and where that
        # table's documents are read now (after renames followed under ``follow``).
        state = StreamState(sink.pool, schema)
        target = (await state.ddl_decisions(MAIN_STREAM)).table_of(namespace)
        if target is None:
            raise ConfigError(f"the table of {namespace} is marked by a DDL policy: it"
                              " receives nothing more", key="--namespace")
        namespace = target
        bf = Backfill(client=client, sink=sink, store=store, config=config.backfill,
                      stream_start=ZERO_TIME, locate=state.locator(MAIN_STREAM))
        if ids is not None:
            found = await bf.copy_ids(namespace, ids)
            log.info("documents copied again", extra={"fields": {
                "namespace": str(namespace), "found": found, "missing": len(ids) - found}})
            return found
        await bf.rebackfill([namespace])
        await bf.run([namespace])
        log.info("namespace copied again", extra={"fields": {
            "namespace": str(namespace), "documents": bf.copied_documents}})
        return bf.copied_documents
    finally:
        await store.close()
        await sink.close()
        await client.close()
