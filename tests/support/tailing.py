"""Wiring for the tailer's integration tests: a real sink, document mode, comparison.

The sink is the real :class:`cdc.sink.Sink` on the test's PostgreSQL database with the
document-mode mapping (``db.coll`` → table ``"db"."coll"``). :func:`differences`
compares MongoDB and PostgreSQL document by document *through the mapping*: every
source document is mapped and must equal its row; every row must have a document.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from bson.raw_bson import RawBSONDocument
from psycopg import sql
from pymongo import AsyncMongoClient, monitoring

from cdc.batch import Batch
from cdc.cursor import RAW
from cdc.mapping import Mapper
from cdc.mapping.document import DocumentMapper
from cdc.sink import Sink
from cdc.sink.sink import asyncpg_params
from cdc.types import Namespace

CONTROL = "mongo2pg"


def mapper_for(ns: Namespace) -> DocumentMapper:
    return DocumentMapper(ns.db, ns.coll)


@asynccontextmanager
async def open_sink(pg_dsn: str, mappers: Callable[[Namespace], Mapper] = mapper_for
                    ) -> AsyncIterator[Sink]:
    sink = await Sink.open(pg_dsn, CONTROL, mappers)
    try:
        yield sink
    finally:
        await sink.close()


class _Recorded:
    """A staged batch whose commit is recorded."""

    def __init__(self, staged: Any, batch: Batch, into: list[Batch]) -> None:
        self.staged, self.batch, self.into = staged, batch, into

    async def commit(self) -> Any:
        result = await self.staged.commit()
        self.into.append(self.batch)
        return result

    async def abort(self) -> None:
        await self.staged.abort()


class RecordingSink:
    """The real sink, plus a record of the batches it was asked to apply."""

    def __init__(self, sink: Sink) -> None:
        self.inner = sink
        self.batches: list[Batch] = []
        self.pool = sink._pool
        self.control_schema = CONTROL

    async def apply(self, batch: Batch) -> Any:
        return await (await self.stage(batch)).commit()

    async def stage(self, batch: Batch) -> Any:
        return _Recorded(await self.inner.stage(batch), batch, self.batches)

    async def load_checkpoint(self, stream: str) -> Any:
        return await self.inner.load_checkpoint(stream)


def mongo(uri: str) -> AsyncMongoClient[Any]:
    return AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000)


async def pg_connect(pg_dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(**asyncpg_params(pg_dsn))


async def differences(client: AsyncMongoClient[Any], pg_dsn: str,
                      namespaces: Sequence[str]) -> list[str]:
    """What differs between MongoDB and PostgreSQL (empty when equal)."""
    problems: list[str] = []
    conn = await pg_connect(pg_dsn)
    try:
        for text in namespaces:
            ns = Namespace.parse(text)
            mapper = mapper_for(ns)
            expected: dict[bytes, tuple[Any, ...]] = {}
            coll = client[ns.db].get_collection(ns.coll, codec_options=RAW)
            async for doc in coll.find({}):
                assert isinstance(doc, RawBSONDocument)
                mapped = mapper.map_document(bytes(doc.raw))
                key, id_text, id_bson, body = mapped.rows[ns.coll][0]
                expected[key] = (id_text, id_bson, json.loads(body))
            table = sql.Identifier(ns.db, ns.coll).as_string(None)
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            actual: dict[bytes, tuple[Any, ...]] = {}
            if exists:
                query = f"SELECT _key, _id, _id_bson, doc::text FROM {table}"  # noqa: S608
                for row in await conn.fetch(query):
                    actual[bytes(row[0])] = (row[1], bytes(row[2]), json.loads(row[3]))
            for key in expected.keys() - actual.keys():
                problems.append(f"{text}: missing in PostgreSQL: {expected[key][0]}")
            for key in actual.keys() - expected.keys():
                problems.append(f"{text}: extra in PostgreSQL: {actual[key][0]}")
            for key in expected.keys() & actual.keys():
                if expected[key] != actual[key]:
                    problems.append(f"{text}: differs: {expected[key][0]}: "
                                    f"{expected[key][2]} != {actual[key][2]}")
    finally:
        await conn.close()
    return problems


async def checkpoint_time(pg_dsn: str, stream: str = "main") -> int | None:
    conn = await pg_connect(pg_dsn)
    try:
        value = await conn.fetchval(
            f"SELECT cluster_time FROM {CONTROL}.checkpoints WHERE stream = $1",  # noqa: S608
            stream)
        return int(value) if value is not None else None
    finally:
        await conn.close()


class CommandLog(monitoring.CommandListener):
    """Records, in order, the commands of the given names a client sends
    (``("started", name, command)``) and their replies (``("succeeded", name, reply)``):
    driver command monitoring."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in self.names:
            self.events.append(("started", event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name in self.names:
            self.events.append(("succeeded", event.command_name, dict(event.reply)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class FindRecorder(CommandLog):
    """Records the ``find`` commands a client sends."""

    def __init__(self) -> None:
        super().__init__("find")

    @property
    def finds(self) -> list[dict[str, Any]]:
        return [command for kind, _, command in self.events if kind == "started"]
