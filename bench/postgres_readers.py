"""Benchmark: warehouse readers on one 1M-row model, rows/s and memory, wsync next to drt-core.

Run with `.venv/bin/python bench/postgres_readers.py [--rows N] [--batch-size N]`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "dbname": "test", "user": "postgres"}
PASSWORD_VARIABLE = "WSYNC_BENCH_PG_PASSWORD"  # trust auth ignores it; a sync file names one

# The conformance suite's user columns, generated in the server.
TABLE_SQL = """
CREATE TABLE {table} AS
SELECT 'C' || i AS customer_id, 'u' || i || '@example.com' AS email,
    (ARRAY['free', 'pro', 'team'])[1 + i % 3] AS plan, (i % 50)::bigint AS seats,
    (i % 1000) / 7.0::float8 AS score, ((i % 10000) / 100.0)::numeric(10, 2) AS balance,
    i % 2 = 0 AS active, DATE '2023-01-01' + i % 365 AS signup_date,
    TIMESTAMP '2024-01-01' + i * INTERVAL '1 second' AS last_login,
    TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL '1 second' AS last_login_tz,
    ARRAY['a', 'b' || i % 5] AS tags, TIMESTAMP '2024-01-01' + i * INTERVAL '1 second' AS updated_at
FROM generate_series(1, {rows}) AS i
"""


def _connection(connection_type: str) -> dict:
    return {
        "type": connection_type,
        "host": PG["host"],
        "port": PG["port"],
        "database": PG["dbname"],
        "user": PG["user"],
        "password": {"env": PASSWORD_VARIABLE},
        "sslmode": "disable",
    }


def _wsync(connection_type: str) -> Callable[[str, int], Iterator[int]]:
    def read(sql: str, batch_size: int) -> Iterator[int]:
        # Drivers are imported when a warehouse first reads (adbc's dbapi takes ~1.5 s): not timed here.
        import adbc_driver_postgresql.dbapi  # noqa: F401
        from pydantic import TypeAdapter

        from wsync_dagster.spec import Connection

        warehouse = TypeAdapter(Connection).validate_python(_connection(connection_type)).open(REPO)
        try:
            yield 0  # connected: the memory baseline is taken here
            for batch in warehouse.read_batches(sql, (), batch_size):
                yield batch.num_rows
        finally:
            warehouse.close()

    return read


def _drt(sql: str, batch_size: int) -> Iterator[int]:
    from drt.config.credentials import PostgresProfile
    from drt.sources.postgres import PostgresSource

    profile = PostgresProfile(type="postgres", fetch_size=batch_size, **PG)
    yield 0
    for _row in PostgresSource().extract(sql, profile):
        yield 1


def _copy_floor(sql: str, batch_size: int) -> Iterator[int]:
    """The server and the wire alone: COPY's binary rows counted and dropped, nothing decoded."""
    import psycopg2

    class Sink:
        def write(self, data: bytes) -> int:
            return len(data)

    connection = psycopg2.connect(**PG)
    yield 0
    with connection.cursor() as cursor:
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT (FORMAT binary)", Sink())
        yield cursor.rowcount
    connection.close()


LINES: dict[str, tuple[str, Callable[[str, int], Iterator[int]]]] = {
    "floor": ("floor: PostgreSQL COPY (binary) to the client, not decoded", _copy_floor),
    "postgres": ("wsync postgres: COPY binary → ADBC → Arrow batches", _wsync("postgres")),
    "redshift": ("wsync redshift path: server-side cursor → Arrow batches", _wsync("redshift")),
    "drt": ("drt-core postgres source: server-side cursor → a dict per row", _drt),
}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_line(name: str, sql: str, batch_size: int) -> dict:
    """Read the model once in this process: rows, wall seconds and memory above the connected baseline."""
    reader = LINES[name][1](sql, batch_size)
    next(reader)
    baseline, start = _max_rss_mb(), time.perf_counter()
    rows = sum(reader)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "baseline_mb": baseline, "peak_mb": _max_rss_mb()}


def _in_subprocess(name: str, sql: str, batch_size: int) -> dict:
    """One line in a fresh process, so each peak memory is its own."""
    done = subprocess.run(
        [sys.executable, __file__, "--line", name, "--sql", sql, "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, PASSWORD_VARIABLE: "unused"},
    )
    if done.returncode != 0:
        return {"failure": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-size", type=int, default=100_000, help="rows per batch (wsync) / fetch (drt)"
    )
    parser.add_argument("--line", choices=LINES, help=argparse.SUPPRESS)
    parser.add_argument("--sql", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.line:
        print(json.dumps(run_line(args.line, args.sql, args.batch_size)))
        return 0

    import psycopg2

    schema = f"wsync_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(**PG)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
        cursor.execute(TABLE_SQL.format(table=f"{schema}.users", rows=args.rows))
        cursor.execute(f"ANALYZE {schema}.users")
    try:
        sql = f"SELECT * FROM {schema}.users"
        print(f"{args.rows:,} rows x 12 columns, batch {args.batch_size:,}; load {os.getloadavg()[0]:.2f}")
        print(f"{'line':64} {'rows':>10} {'s':>7} {'rows/s':>10} {'+MB':>6}")
        results = {}
        for name, (label, _) in LINES.items():
            result = results[name] = _in_subprocess(name, sql, args.batch_size)
            if "failure" in result:
                print(f"{label:64} {result['failure']}")
                continue
            rate = result["rows"] / result["seconds"]
            grown = result["peak_mb"] - result["baseline_mb"]
            print(f"{label:64} {result['rows']:>10,} {result['seconds']:>7.2f} {rate:>10,.0f} {grown:>6.0f}")
        if "failure" not in results["drt"]:
            for name in ("postgres", "redshift"):
                if "failure" not in results[name]:
                    ratio = results["drt"]["seconds"] / results[name]["seconds"]
                    print(f"  wsync {name} rows/s ÷ drt-core rows/s: {ratio:.1f}")
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
