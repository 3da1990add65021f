"""Fail points, user-write blocking and transactions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import AutoReconnect, OperationFailure

from tests.conformance.streams import take

Client = MongoClient[dict[str, Any]]
Db = Database[dict[str, Any]]


@pytest.fixture
def app(mongo_uri: str, mongo_client: Client) -> Iterator[tuple[str, Client]]:
    """A client with an application name of its own; the fail point is off afterwards."""
    name = f"conf-{uuid.uuid4().hex[:8]}"
    client: Client = MongoClient(mongo_uri, appName=name, retryReads=False, retryWrites=False)
    try:
        yield name, client
    finally:
        mongo_client.admin.command("configureFailPoint", "failCommand", mode="off")
        client.close()


def _block(admin_client: Client, on: bool) -> None:
    admin_client.admin.command({"setUserWriteBlockMode": 1, "global": on})


def _fail(admin_client: Client, mode: Any, **data: Any) -> None:
    admin_client.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)


def test_fail_command_times_fails_the_next_n_then_passes(app: tuple[str, Client],
                                                         mongo_client: Client, db: Db) -> None:
    name, client = app
    _fail(mongo_client, {"times": 2}, failCommands=["insert"], errorCode=2, appName=name)
    coll = client[db.name].c
    for _ in range(2):
        with pytest.raises(OperationFailure) as info:
            coll.insert_one({})
        assert info.value.code == 2
    coll.insert_one({"_id": "ok"})
    assert coll.find_one({"_id": "ok"}) == {"_id": "ok"}


def test_fail_command_skip_and_always_on_and_off(app: tuple[str, Client],
                                                 mongo_client: Client, db: Db) -> None:
    name, client = app
    coll = client[db.name].c
    _fail(mongo_client, {"skip": 1}, failCommands=["insert"], errorCode=8000, appName=name)
    coll.insert_one({"_id": 1})
    for _ in range(2):
        with pytest.raises(OperationFailure):
            coll.insert_one({})
    _fail(mongo_client, "alwaysOn", failCommands=["find"], errorCode=8000,
          errorLabels=["SomeLabel"], appName=name)
    with pytest.raises(OperationFailure) as info:
        coll.find_one()
    assert info.value.code == 8000 and info.value.has_error_label("SomeLabel")
    _fail(mongo_client, "off")
    assert coll.find_one() == {"_id": 1}


def test_fail_point_only_hits_the_named_application(app: tuple[str, Client],
                                                    mongo_client: Client, db: Db) -> None:
    name, client = app
    _fail(mongo_client, "alwaysOn", failCommands=["insert"], errorCode=2, appName=name)
    mongo_client[db.name].c.insert_one({"_id": 1})
    with pytest.raises(OperationFailure):
        client[db.name].c.insert_one({"_id": 2})


def test_close_connection_drops_the_socket(app: tuple[str, Client], mongo_client: Client,
                                           db: Db) -> None:
    name, client = app
    db.c.insert_one({"_id": 1})
    _fail(mongo_client, {"times": 1}, failCommands=["find"], closeConnection=True, appName=name)
    with pytest.raises(AutoReconnect):
        client[db.name].c.find_one()
    assert client[db.name].c.find_one() == {"_id": 1}


def test_block_connection_stalls_the_command(app: tuple[str, Client], mongo_client: Client,
                                             db: Db) -> None:
    name, client = app
    db.c.insert_one({"_id": 1})
    _fail(mongo_client, {"times": 1}, failCommands=["find"], blockConnection=True,
          blockTimeMS=400, appName=name)
    t0 = time.monotonic()
    assert client[db.name].c.find_one() == {"_id": 1}
    assert time.monotonic() - t0 >= 0.35


def test_change_stream_resumes_after_resumable_get_more_error(
        app: tuple[str, Client], mongo_client: Client, db: Db) -> None:
    name, client = app
    coll = client[db.name].c
    with coll.watch(max_await_time_ms=100) as stream:
        coll.insert_one({"_id": 1})
        assert take(stream, 1)[0]["documentKey"] == {"_id": 1}
        _fail(mongo_client, {"times": 1}, failCommands=["getMore"], errorCode=6,
              errorLabels=["ResumableChangeStreamError"], appName=name)
        coll.insert_one({"_id": 2})
        assert take(stream, 1)[0]["documentKey"] == {"_id": 2}


def test_non_resumable_get_more_error_reaches_the_reader(
        app: tuple[str, Client], mongo_client: Client, db: Db) -> None:
    name, client = app
    coll = client[db.name].c
    with coll.watch(max_await_time_ms=100) as stream:
        _fail(mongo_client, {"times": 1}, failCommands=["getMore"], errorCode=280,
              errorLabels=[], appName=name)
        with pytest.raises(OperationFailure) as info:
            stream.try_next()
    assert info.value.code == 280


def test_user_write_block_mode_refuses_writes_but_not_reads(mongo_client: Client,
                                                            db: Db) -> None:
    db.c.insert_one({"_id": 1})
    _block(mongo_client, True)
    try:
        with pytest.raises(OperationFailure) as info:
            db.c.insert_one({"_id": 2})
        assert info.value.code == 371
        with pytest.raises(OperationFailure):
            db.c.update_one({"_id": 1}, {"$set": {"x": 1}})
        with pytest.raises(OperationFailure) as ddl:
            db.create_collection("d")
        assert ddl.value.code == 371
        assert db.c.find_one() == {"_id": 1}
    finally:
        _block(mongo_client, False)
    db.c.insert_one({"_id": 2})
    assert db.c.count_documents({}) == 2


@pytest.mark.sandbox_only
def test_bypass_application_may_write_while_blocked(mongo_uri: str, mongo_client: Client,
                                                    db: Db) -> None:
    bypass: Client = MongoClient(mongo_uri, appName="mongo2pg-bypass-write-block")
    _block(mongo_client, True)
    try:
        bypass[db.name].c.insert_one({"_id": 1})
        with pytest.raises(OperationFailure):
            db.c.insert_one({"_id": 2})
    finally:
        _block(mongo_client, False)
        bypass.close()
    assert db.c.find_one() == {"_id": 1}


def test_transaction_commits_atomically_with_shared_time_and_session(
        mongo_client: Client, db: Db) -> None:
    db.create_collection("c")
    db.c.insert_one({"_id": 0})
    with db.c.watch(max_await_time_ms=100) as stream, mongo_client.start_session() as session:
        session_id = session.session_id["id"]
        with session.start_transaction():
            db.c.insert_one({"_id": 1}, session=session)
            db.c.update_one({"_id": 0}, {"$set": {"t": 1}}, session=session)
            db.c.insert_one({"_id": 2}, session=session)
            assert db.c.count_documents({}, session=session) == 3
            assert db.c.count_documents({}) == 1  # others do not see it yet
            assert db.c.find_one({"_id": 0}) == {"_id": 0}
        assert db.c.count_documents({}) == 3
        events = take(stream, 3)
    assert [e["operationType"] for e in events] == ["insert", "update", "insert"]
    assert len({e["clusterTime"] for e in events}) == 1
    assert all(e["lsid"]["id"] == session_id for e in events)
    assert len({e["txnNumber"] for e in events}) == 1


def test_aborted_transaction_leaves_no_trace(mongo_client: Client, db: Db) -> None:
    db.create_collection("c")
    with db.c.watch(max_await_time_ms=100) as stream, mongo_client.start_session() as session:
        session.start_transaction()
        db.c.insert_one({"_id": 1}, session=session)
        session.abort_transaction()
        db.c.insert_one({"_id": 2})
        (event,) = take(stream, 1)
    assert event["documentKey"] == {"_id": 2} and "lsid" not in event
    assert [d["_id"] for d in db.c.find()] == [2]
