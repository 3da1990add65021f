"""``make demo``: the migration end to end on embedded defaults.

Grows with the product; today it starts a throwaway PostgreSQL and reports it.
"""

from __future__ import annotations

import sys

import psycopg

from ops.pgtemp import TempPostgres


def main() -> int:
    pg = TempPostgres()
    try:
        dsn = pg.start()
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT version()").fetchone()
        print(f"throwaway PostgreSQL up on port {pg.port}: {row[0] if row else '?'}")
    finally:
        pg.stop()
    print("throwaway PostgreSQL stopped and removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
