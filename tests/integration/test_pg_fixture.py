from __future__ import annotations

import psycopg


def test_each_test_gets_its_own_empty_database(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE marker (x int)")
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema='public'"
        ).fetchone()
    assert row is not None and row[0] == 1


def test_databases_do_not_leak_between_tests(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT to_regclass('public.marker') IS NULL").fetchone()
    assert row == (True,)
