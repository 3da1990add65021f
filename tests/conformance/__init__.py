"""Conformance of the sandbox with MongoDB, pinned through pymongo alone.

Every test here talks to whatever ``mongo_uri`` names — the sandbox by default, a real
replica set when ``MONGO2PG_TEST_MONGO_URI`` is set — so the suite doubles as a check
that the sandbox behaves like the server. Tests marked ``sandbox_only`` need something
only the sandbox can do (a tiny oplog, the write-block bypass by application name).
"""
