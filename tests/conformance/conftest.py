"""Per-test databases for the conformance suite, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

Client = MongoClient[dict[str, Any]]


@pytest.fixture
def db(mongo_client: Client) -> Iterator[Database[dict[str, Any]]]:
    """A database of this test's own on the replica set under test."""
    name = f"conf_{uuid.uuid4().hex[:12]}"
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)
