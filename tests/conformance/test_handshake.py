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


def _op_msg(request_id: int, flags: int, body: dict[str, Any],
            sequences: dict[str, list[dict[str, Any]]]) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    for ident, docs in sequences.items():
        section = ident.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def _read_op_msg(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    length, _, response_to, op_code = struct.unpack("<iiii", _recv_exact(sock, 16))
    payload = _recv_exact(sock, length - 16)
    assert op_code == 2013 and payload[4] == 0
    return response_to, bson.decode(payload[5:])


def test_op_msg_document_sequences_and_more_to_come(mongo_uri: str,
                                                    db: Database[dict[str, Any]]) -> None:
    docs = [{"_id": i} for i in range(3)]
    with socket.create_connection(_address(mongo_uri), timeout=5) as sock:
        sock.sendall(_op_msg(1, 0, {"insert": "c", "$db": db.name}, {"documents": docs}))
        response_to, reply = _read_op_msg(sock)
        assert response_to == 1 and reply["n"] == 3 and reply["ok"] == 1.0
        # moreToCome (bit 1): the server must not answer this one ...
        sock.sendall(_op_msg(2, 2, {"insert": "c", "$db": db.name,
                                    "writeConcern": {"w": 0}}, {"documents": [{"_id": 9}]}))
        # ... so the next reply on the wire answers request 3
        sock.sendall(_op_msg(3, 0, {"count": "c", "$db": db.name}, {}))
        response_to, reply = _read_op_msg(sock)
    assert response_to == 3 and reply["n"] == 4
