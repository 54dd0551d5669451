"""The peer: drt-core syncing the same users model from the same DuckDB file into PostgreSQL."""

from __future__ import annotations

import uuid
from importlib import metadata
from pathlib import Path

import duckdb
import pyarrow as pa
from warehouse import USERS_SQL, BenchData

DRT_INSTALL = "drt-core[duckdb,postgres]"


def drt_version() -> str | None:
    """drt-core's installed version, or None."""
    try:
        return metadata.version("drt-core")
    except metadata.PackageNotFoundError:
        return None


def _postgres_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "bigint"
    if pa.types.is_floating(arrow_type):
        return "double precision"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    return "text"


def run_drt(data: BenchData, dsn: dict, batch_size: int, workdir: Path) -> int:
    """drt-core's engine: upsert one row per user into a fresh table keyed by customer_id; the rows landed."""
    import psycopg2
    from drt.config.profiles import DuckDBProfile
    from drt.config.sync_options import SyncConfig
    from drt.destinations.postgres import PostgresDestination
    from drt.engine.sync import run_sync
    from drt.sources.duckdb import DuckDBSource

    con = duckdb.connect(str(data.warehouse), read_only=True)
    try:
        schema = con.sql(f"SELECT * FROM ({USERS_SQL}) LIMIT 0").to_arrow_table().schema
    finally:
        con.close()
    table = f"drt_bench_users_{uuid.uuid4().hex[:10]}"
    columns = ", ".join(
        f'"{f.name}" {_postgres_type(f.type)}' + (" PRIMARY KEY" if f.name == "customer_id" else "")
        for f in schema
    )
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE public.{table} ({columns})")
        sync = SyncConfig.model_validate(
            {
                "name": "wsync_bench_users",
                "model": USERS_SQL,
                "destination": {
                    "type": "postgres",
                    **{k: dsn[k] for k in ("host", "port", "user", "dbname")},
                    "table": f"public.{table}",
                    "upsert_key": ["customer_id"],
                },
                "sync": {"mode": "upsert", "batch_size": batch_size},
            }
        )
        profile = DuckDBProfile(type="duckdb", database=str(data.warehouse))
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_sync(sync, DuckDBSource(), PostgresDestination(), profile, workdir)
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM public.{table}")
            (landed,) = cur.fetchone()
        if result.failed or landed != result.success:
            raise RuntimeError(f"{result.failed} rows failed, {landed} of {result.success} landed")
        return landed
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS public.{table}")
        conn.close()
