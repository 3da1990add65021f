"""Reading a document by ``_id`` when its change event does not carry it.

Labelled with the *event's* cluster time exactly like ``updateLookup`` content (the
document may be newer than the event, never older — DESIGN §3.2). Cases:

* ``updateLookup`` returned ``null``: the lookup ran in the event's namespace when the
  tailer read the event, which may be *after* the collection was renamed — the update
  would be lost silently if ``null`` were read as "a delete follows";
* post-image mode (``whenAvailable``): a ``null`` image means the image was not kept,
  not that the document is gone;
* an event too large to read is re-fetched after it was dead-lettered.

Where the document lives now (:func:`current_namespace`): its event's namespace, unless
a ``rename`` of that collection follows the event in the oplog — then the rename's
target (followed along a chain of renames), when the caller's DDL policy follows
renames. A short DDL-only change stream from the event's token, read up to the server's
time now, answers that; it runs only for documents absent from the event's namespace,
which is rare. Reads use ``readConcern: majority`` so no content is used that a
rollback could take back.

Still absent after that, the document is truly gone from where it lives: either it
was deleted (its delete event follows and settles it with a newer version) or its
collection was dropped (the DDL policy decides; no policy deletes target rows). So
nothing is emitted for it — never a delete that a drop did not ask for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import msgspec
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient
from pymongo.read_concern import ReadConcern

from cdc.cursor import RAW, ChangeStreamCursor, StartAt, operation_time
from cdc.events import ChangeEvent, Delete, Rename, Update, decode_event, id_document
from cdc.types import Namespace

MAJORITY = ReadConcern("majority")
MAX_RENAMES = 16
"""Renames followed in a chain before giving up (the last name found is used)."""
LOCATE_TIMEOUT_S = 30.0

FollowsRenames = Callable[[Namespace], bool]


async def fetch_by_id(client: AsyncMongoClient[Any], ns: Namespace, id_bson: bytes
                      ) -> bytes | None:
    """The current raw document with the ``_id`` of ``id_bson`` (majority-read), or ``None``."""
    coll = client[ns.db].get_collection(ns.coll, codec_options=RAW, read_concern=MAJORITY)
    found = await coll.find_one(RawBSONDocument(id_bson))
    return bytes(found.raw) if found is not None else None


async def current_namespace(client: AsyncMongoClient[Any], ns: Namespace, token: bytes,
                            follows: FollowsRenames) -> Namespace | None:
    """Where a document of ``ns`` as of the event ``token`` lives now: ``ns`` itself, the
    target of the renames that followed (when ``follows`` says so), or ``None`` when its
    collection was dropped or renamed away under a policy that does not follow."""
    follow = follows(ns)  # the policy of the event's collection decides the whole chain
    ping = await client.admin.command("ping")
    until = operation_time(ping)
    with anyio.fail_after(LOCATE_TIMEOUT_S):
        for _ in range(MAX_RENAMES):
            found = await _next_ddl(client, ns, token, until)
            if found is None:
                return ns
            if not isinstance(found, Rename) or not follow:
                return None
            ns, token = found.to, found.token
    return ns


async def _next_ddl(client: AsyncMongoClient[Any], ns: Namespace, token: bytes,
                    until: Any) -> ChangeEvent | None:
    """The first drop/rename/dropDatabase/invalidate of ``ns`` after ``token``, read up to
    the server time ``until``; ``None`` when there is none."""
    cursor = ChangeStreamCursor(client, patterns=[str(ns)], full_document="default",
                                split_large_events=False, batch_size=16, strip_bodies=True,
                                only_ddl=True)
    try:
        reply = await cursor.open(StartAt(resume_after=token))
        while True:
            if reply.events:
                return decode_event(RawBSONDocument(reply.events[0], RAW))
            if until is None or (reply.time is not None and reply.time >= until):
                return None
            if not cursor.alive:
                return None
            reply = await cursor.next_batch(50)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await cursor.close()


async def current_document(client: AsyncMongoClient[Any], ns: Namespace, token: bytes,
                           id_bson: bytes, follows: FollowsRenames) -> bytes | None:
    """The document of an event (namespace ``ns``, resume ``token``) as it is now."""
    doc = await fetch_by_id(client, ns, id_bson)
    if doc is not None:
        return doc
    where = await current_namespace(client, ns, token, follows)
    if where is None or where == ns:
        return None
    return await fetch_by_id(client, where, id_bson)


async def fill_post_images(client: AsyncMongoClient[Any], events: list[ChangeEvent],
                           full_document: str, follows: FollowsRenames = lambda ns: False
                           ) -> list[ChangeEvent]:
    """``events`` with every missing post-image of an update fetched by ``_id``.

    An update whose key is deleted later in ``events`` needs no content (the delete is
    the key's last change in the batch); every other ``null`` image is fetched from where
    the document lives now. A document still absent stays ``null`` (the batcher emits
    nothing for it; see the module docstring)."""
    del full_document  # null means "not kept" or "looked up too late": fetched either way
    if not any(type(e) is Update and e.full_document is None for e in events):
        return events  # the common case: every update carries its document
    deleted_later: set[tuple[Namespace, bytes]] = set()
    wanted: list[int] = []
    for i in range(len(events) - 1, -1, -1):
        event = events[i]
        if isinstance(event, Delete):
            deleted_later.add((event.ns, id_document(event.document_key)))
        elif isinstance(event, Update) and event.full_document is None and (
                event.ns, id_document(event.document_key)) not in deleted_later:
            wanted.append(i)
    if not wanted:
        return events
    out = list(events)
    for i in reversed(wanted):
        event = out[i]
        if not isinstance(event, Update):  # pragma: no cover - chosen above
            continue
        doc = await current_document(client, event.ns, event.token,
                                     id_document(event.document_key), follows)
        out[i] = msgspec.structs.replace(event, full_document=doc)
    return out
