"""Reading a document by ``_id`` when its change event does not carry it.

Two cases, both labelled with the *event's* cluster time exactly like ``updateLookup``
content (the document may be newer than the event, never older — DESIGN §3.2):

* post-image mode (``whenAvailable``): a ``null`` image means the image was not kept,
  not that the document is gone, so the current document is fetched instead;
* an event too large to read is re-fetched after it was dead-lettered.

A document that is gone by now is ``None``: the delete event that follows settles it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient

from cdc.cursor import RAW
from cdc.events import ChangeEvent, Update, id_document
from cdc.types import Namespace


async def fetch_by_id(client: AsyncMongoClient[Any], ns: Namespace, id_bson: bytes
                      ) -> bytes | None:
    """The current raw document with the ``_id`` of ``id_bson``, or ``None``."""
    coll = client[ns.db].get_collection(ns.coll, codec_options=RAW)
    found = await coll.find_one(RawBSONDocument(id_bson))
    return bytes(found.raw) if found is not None else None


async def fill_post_images(client: AsyncMongoClient[Any], events: list[ChangeEvent],
                           full_document: str) -> list[ChangeEvent]:
    """``events`` with every missing post-image of an update fetched by ``_id``."""
    if full_document == "updateLookup":
        return events  # null there means "deleted since": nothing to fetch
    out = events
    for i, event in enumerate(events):
        if isinstance(event, Update) and event.full_document is None:
            if out is events:
                out = list(events)
            doc = await fetch_by_id(client, event.ns, id_document(event.document_key))
            out[i] = msgspec.structs.replace(event, full_document=doc)
    return out
