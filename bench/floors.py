"""The floor: the rows a sync leaves in the store, bulk-loaded into the store's own tables with no logic.

The rows are shaped in DuckDB (one profile, two identities and five attribute registers per user; one
row per event) and loaded the fastest plain way each store has: SQLite `executemany` in one transaction,
PostgreSQL COPY (ADBC ingest). Whatever a sync does beyond this is the price of its rules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
from warehouse import ATTRIBUTES, ENVIRONMENT, EVENTS_SYNC, FULL_SYNC, BenchData

BATCH_ROWS = 100_000


def _shapes(data: BenchData, what: str) -> dict[str, str]:
    """Per store table, the DuckDB SQL of its rows (columns named as the store's)."""
    now = datetime.now(UTC).isoformat()
    if what == "events":
        return {
            "events": f"""SELECT '{ENVIRONMENT}' AS environment, '{EVENTS_SYNC}' AS sync, event_id,
                customer_id AS profile_id, 'custom_event' AS event_type, NULL::VARCHAR AS event_name,
                epoch_ms(event_ts) AS timestamp_ms,
                to_json({{event_name: event_name, amount: amount}})::VARCHAR AS data
            FROM bench.events"""
        }
    identities = " UNION ALL ".join(
        f"""SELECT '{ENVIRONMENT}' AS environment, '{name}' AS identity_type, {name} AS value,
            customer_id AS profile_id, '{now}' AS created_at, epoch_us(updated_at) AS version FROM bench.users"""
        for name in ("customer_id", "email")
    )
    attributes = " UNION ALL ".join(
        f"""SELECT customer_id AS profile_id, '{name}' AS name, '{FULL_SYNC}' AS sync,
            to_json({name})::VARCHAR AS value, epoch_us(updated_at) AS version, 1::BIGINT AS seq,
            '{now}' AS updated_at FROM bench.users"""
        for name in ATTRIBUTES
    )
    return {
        "profiles": f"SELECT customer_id AS profile_id, '{ENVIRONMENT}' AS environment, '{now}' AS created_at"
        " FROM bench.users",
        "identities": identities,
        "attributes": attributes,
    }


def _batches(data: BenchData, sql: str) -> Iterator[pa.RecordBatch]:
    con = duckdb.connect(str(data.warehouse), read_only=True)
    try:
        yield from con.sql(sql).to_arrow_reader(BATCH_ROWS)
    finally:
        con.close()


def load_sqlite(data: BenchData, what: str, path: str) -> int:
    """Plain INSERTs of every shaped row into the store file's tables, one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = 0
        conn.execute("BEGIN")
        for table, sql in _shapes(data, what).items():
            for batch in _batches(data, sql):
                names = batch.schema.names
                insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                conn.executemany(insert, zip(*(column.to_pylist() for column in batch.columns), strict=True))
                rows += batch.num_rows
        conn.execute("COMMIT")
        return rows
    finally:
        conn.close()


def load_postgres(data: BenchData, what: str, url: str) -> int:
    """COPY (ADBC ingest) of every shaped row into the store database's tables, one transaction."""
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(url)
    try:
        rows = 0
        with conn.cursor() as cur:
            for table, sql in _shapes(data, what).items():
                target = conn.adbc_get_table_schema(table)
                for batch in _batches(data, sql):
                    # COPY binary takes only the column's own type (an int4 into a bigint column fails).
                    shaped = pa.RecordBatch.from_arrays(
                        [batch.column(n).cast(target.field(n).type) for n in batch.schema.names],
                        names=batch.schema.names,
                    )
                    rows += cur.adbc_ingest(table, shaped, mode="append")
        conn.commit()
        return rows
    finally:
        conn.close()
