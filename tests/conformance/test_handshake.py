"""Handshake, topology and reply shape: what a driver sees when it connects."""

from __future__ import annotations

import socket
import struct
from typing import Any
from urllib.parse import urlparse

import bson
import pytest
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

Client = MongoClient[dict[str, Any]]


def _address(uri: str) -> tuple[str, int]:
    netloc = urlparse(uri).netloc.split(",")[0].rsplit("@", 1)[-1]
    host, _, port = netloc.rpartition(":")
    return host or "127.0.0.1", int(port or 27017)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_hello_reports_writable_primary_of_a_replica_set(mongo_client: Client) -> None:
    hello = mongo_client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert isinstance(hello["setName"], str) and hello["setName"]
    assert hello["me"] in hello["hosts"] and hello["primary"] == hello["me"]
    for field in ("setVersion", "electionId", "topologyVersion",
                  "logicalSessionTimeoutMinutes", "minWireVersion", "maxWireVersion"):
        assert field in hello, field
    assert hello["maxWireVersion"] >= 17
    assert isinstance(hello["$clusterTime"]["clusterTime"], Timestamp)
    assert isinstance(hello["operationTime"], Timestamp)


def test_replica_set_and_direct_connections_both_work(mongo_uri: str) -> None:
    direct = f"mongodb://{':'.join(map(str, _address(mongo_uri)))}/?directConnection=true"
    for uri in (mongo_uri, direct):
        client: Client = MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            assert client.admin.command("ping")["ok"] == 1.0
        finally:
            client.close()


def test_legacy_op_query_is_master_gets_an_op_reply(mongo_uri: str) -> None:
    query = bson.encode({"isMaster": 1, "helloOk": True})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    msg = struct.pack("<iiii", 16 + len(body), 7, 0, 2004) + body
    with socket.create_connection(_address(mongo_uri), timeout=5) as sock:
        sock.sendall(msg)
        length, _, response_to, op_code = struct.unpack("<iiii", _recv_exact(sock, 16))
        payload = _recv_exact(sock, length - 16)
    assert (op_code, response_to) == (1, 7)
    _flags, _cursor, _start, returned = struct.unpack("<iqii", payload[:20])
    reply = bson.decode(payload[20:])
    assert returned == 1 and reply["ismaster"] is True and reply["ok"] == 1.0


def test_errors_have_mongodb_shape_and_cluster_time(db: Database[dict[str, Any]]) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("noSuchCommandAtAll")
    details = info.value.details or {}
    assert info.value.code == 59
    assert details["codeName"] == "CommandNotFound" and details["ok"] == 0
    assert "errmsg" in details and "operationTime" in details and "$clusterTime" in details


def test_build_info_server_status_and_repl_status(mongo_client: Client) -> None:
    info = mongo_client.admin.command("buildInfo")
    assert int(info["version"].split(".")[0]) >= 6
    status = mongo_client.admin.command("serverStatus")
    assert status["ok"] == 1.0 and "uptime" in status
    repl = mongo_client.admin.command("replSetGetStatus")
    primaries = [m for m in repl["members"] if m["stateStr"] == "PRIMARY"]
    assert len(primaries) == 1 and repl["myState"] == 1


def test_malformed_message_closes_only_that_connection(mongo_uri: str,
                                                       mongo_client: Client) -> None:
    garbage = struct.pack("<iiii", 16 + 9, 1, 0, 2013) + b"\x00\x00\x00\x00\x00\xff\xff\xff\x7f"
    with socket.create_connection(_address(mongo_uri), timeout=5) as sock:
        sock.sendall(garbage)
        assert _recv_exact(sock, 16) == b""  # the server hung up on us
    assert mongo_client.admin.command("ping")["ok"] == 1.0
    client: Client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        assert client.admin.command("ping")["ok"] == 1.0
    finally:
        client.close()


def test_list_databases_includes_written_database(db: Database[dict[str, Any]],
                                                  mongo_client: Client) -> None:
    db.c.insert_one({"x": 1})
    assert db.name in mongo_client.list_database_names()
    assert "c" in db.list_collection_names()
