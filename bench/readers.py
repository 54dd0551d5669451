"""Benchmark: wsync's warehouse readers on one model in every engine that runs here, next to drt-core.

Run with `.venv/bin/python bench/readers.py [--rows N] [--bq-rows N] [--engines a,b] [--drt-python PY]`;
see bench/README.md. Each line reads in a fresh process: rows/s, and `+MB`, what reading added to
the process's peak memory after connecting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the conformance suite's engines load the tables

COLUMNS = ("customer_id", "email", "plan", "seats", "score", "updated_at")
MODEL = f"SELECT {', '.join(COLUMNS)} FROM crm.users"
ENGINES = ("duckdb", "postgres", "redshift", "snowflake", "bigquery", "delta", "databricks")
# What stands in for each warehouse here.
STAND_INS = {
    "duckdb": "a DuckDB file",
    "postgres": "the local PostgreSQL",
    "redshift": "the local PostgreSQL, read by the Redshift path",
    "snowflake": "fakesnow's server (Snowflake's REST protocol on DuckDB), in the bench process",
    "bigquery": "the BigQuery emulator (bqemulator, REST pages)",
    "delta": "a Delta table in a tmp folder",
    "databricks": "the generated Databricks SQL on a local SparkSession (no Databricks endpoint here)",
}
# The engines' test modules, by engine name.
ENGINE_MODULES = {"databricks": "databricks_sql_on_local_spark"}


def users(rows: int) -> pa.Table:
    """The model's table: ids, text, a nullable text, an integer, a double and a naive timestamp."""
    ids = pa.array(range(rows), pa.int64())
    text_ids = pc.cast(ids, pa.string())
    return pa.table(
        {
            "customer_id": pc.binary_join_element_wise("C", text_ids, ""),
            "email": pc.binary_join_element_wise("user", text_ids, "@example.com", ""),
            "plan": pa.array((["pro", "free", "team", None] * (rows // 4 + 1))[:rows], pa.string()),
            "seats": pc.remainder(ids, 50),
            "score": pc.divide(pc.cast(ids, pa.float64()), 7.0),
            "updated_at": pc.cast(pc.multiply(ids, 1_000_000), pa.timestamp("us")),
        }
    )


# ---- loading: the parent puts the table in each engine, and says how each line reaches it --------------


def load(engine: str, table: pa.Table, folder: Path, stack: ExitStack) -> dict:
    """Put `crm.users` into the engine; what the line processes need to read it (a sync file's connection)."""
    import importlib

    if engine == "databricks":
        # The local Spark session lives in the reading process: it loads the table itself, from Parquet.
        import pyarrow.parquet as pq

        pq.write_table(table, folder / "users.parquet")
        return {"parquet": str(folder / "users.parquet")}
    if engine == "snowflake":
        return {"connection": load_fakesnow(table)}
    module = importlib.import_module(f"wsync_dagster_tests.engines.{ENGINE_MODULES.get(engine, engine)}")
    warehouse = stack.enter_context(_started(module.start(folder)))
    connection = warehouse.load({"crm.users": table})
    return {"connection": connection, "database": getattr(warehouse, "database", None)}


def _started(engine: Iterator):
    """An engine generator as a context manager (its cleanup runs at exit)."""
    from contextlib import contextmanager

    @contextmanager
    def started():
        try:
            yield next(engine)
        finally:
            engine.close()

    return started()


def load_fakesnow(table: pa.Table) -> dict:
    """The table in fakesnow's shared DuckDB, created with Snowflake SQL, filled by DuckDB from Arrow."""
    import logging

    import fakesnow.server

    from wsync_dagster_tests.engines import snowflake

    # fakesnow logs each login and warns of each Arrow copy it makes: not this table's business.
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="fakesnow")

    engine = snowflake.SnowflakeEngine("bench")
    engine.execute("CREATE SCHEMA crm")
    fakesnow.server.shared_fs.duck_conn.register("incoming", table)
    fakesnow.server.shared_fs.duck_conn.execute("CREATE TABLE bench.crm.users AS SELECT * FROM incoming")
    fakesnow.server.shared_fs.duck_conn.unregister("incoming")
    return engine.connection()


def snowflake_password():
    """The fakesnow login's password in the variable its connection names, for this process and its lines."""
    from unittest import mock

    from wsync_dagster_tests.engines import snowflake

    return mock.patch.dict(os.environ, {snowflake.PASSWORD_ENV: snowflake.PASSWORD})


# ---- the lines: each runs in its own process, yields 0 once connected, then rows as it reads ----------


def wsync_line(target: dict, batch_size: int) -> Iterator[int]:
    """wsync's reader for the engine's connection: Arrow record batches."""
    from pydantic import TypeAdapter

    from wsync_dagster.spec import Connection

    warehouse = TypeAdapter(Connection).validate_python(target["connection"]).open(REPO)
    try:
        warehouse.columns(MODEL)  # drivers imported, connected: the baseline is taken after this
        yield 0
        for batch in warehouse.read_batches(MODEL, (), batch_size):
            yield batch.num_rows
    finally:
        warehouse.close()


def databricks_line(target: dict, batch_size: int) -> Iterator[int]:
    """wsync's Databricks reader, its connector's connect answered by the local Spark session."""
    import pyarrow.parquet as pq

    from wsync_dagster_tests.engines import databricks_sql_on_local_spark as spark

    with spark.standing_in_for_databricks() as engine:
        connection = engine.load({"crm.users": pq.read_table(target["parquet"])})
        yield from wsync_line({"connection": connection}, batch_size)


def drt_line(engine: str) -> Callable[[dict, int], Iterator[int]]:
    """drt-core's source for the engine reading the same table: one dict per row."""

    def read(target: dict, batch_size: int) -> Iterator[int]:
        source, profile, sql = drt_source(engine, target["connection"], batch_size)
        yield 0
        for _row in source.extract(sql, profile):
            yield 1

    return read


def drt_source(engine: str, connection: dict, batch_size: int):
    """drt-core's source and profile for a wsync connection; drt names tables its own way on some engines."""
    from drt.config import credentials as drt

    if engine == "duckdb":
        from drt.sources.duckdb import DuckDBSource

        return DuckDBSource(), drt.DuckDBProfile(type="duckdb", database=connection["path"]), MODEL
    if engine in ("postgres", "redshift"):
        from drt.sources.postgres import PostgresSource
        from drt.sources.redshift import RedshiftSource

        keys = {k: connection[k] for k in ("host", "port", "user")} | {"dbname": connection["database"]}
        if engine == "postgres":
            return (
                PostgresSource(),
                drt.PostgresProfile(type="postgres", fetch_size=batch_size, **keys),
                MODEL,
            )
        return RedshiftSource(), drt.RedshiftProfile(type="redshift", fetch_size=batch_size, **keys), MODEL
    if engine == "delta":
        from drt.sources.deltalake import DeltaLakeSource

        profile = drt.DeltaLakeProfile(
            type="deltalake", location=connection["tables"]["crm.users"], table="users"
        )
        return DeltaLakeSource(), profile, MODEL.replace("crm.users", "users")
    if engine == "snowflake":
        import functools

        import snowflake.connector
        from drt.sources.snowflake import SnowflakeSource

        # drt's profile has no host or port: the connector's connect is pointed at fakesnow's address.
        address = {key: connection[key] for key in ("host", "port", "protocol")}
        snowflake.connector.connect = functools.partial(snowflake.connector.connect, **address)
        profile = drt.SnowflakeProfile(
            type="snowflake",
            account=connection["account"],
            user=connection["user"],
            password_env=connection["password"]["env"],
            database=connection["database"],
            warehouse=connection["warehouse"],
            fetch_size=batch_size,
        )
        return SnowflakeSource(), profile, MODEL
    if engine == "bigquery":
        import google.auth
        from drt.sources.bigquery import BigQuerySource
        from google.auth.credentials import AnonymousCredentials

        # drt's profile has no endpoint: google-cloud-bigquery's emulator variable points it there, and
        # application default credentials (none offline) are anonymous ones, as the emulator takes.
        os.environ["BIGQUERY_EMULATOR_HOST"] = connection["api_endpoint"]
        google.auth.default = lambda *args, **kwargs: (AnonymousCredentials(), connection["project"])
        profile = drt.BigQueryProfile(type="bigquery", project=connection["project"], dataset="crm")
        return BigQuerySource(), profile, MODEL
    raise ValueError(f"drt-core has no {engine} source that runs here")


def duckdb_floor(target: dict, batch_size: int) -> Iterator[int]:
    """DuckDB's own Arrow reader on the file: no probe, no types, no session settings."""
    import duckdb

    with duckdb.connect(target["connection"]["path"], read_only=True) as connection:
        yield 0
        for batch in connection.sql(MODEL).to_arrow_reader(batch_size):
            yield batch.num_rows


def postgres_floor(target: dict, batch_size: int) -> Iterator[int]:
    """The server and the wire alone: COPY's binary rows counted and dropped, nothing decoded."""
    import psycopg2

    class Sink:
        def write(self, data: bytes) -> int:
            return len(data)

    keys = target["connection"]
    connection = psycopg2.connect(
        host=keys["host"], port=keys["port"], user=keys["user"], dbname=keys["database"]
    )
    yield 0
    with connection.cursor() as cursor:
        cursor.copy_expert(f"COPY ({MODEL}) TO STDOUT (FORMAT binary)", Sink())
        yield cursor.rowcount
    connection.close()


def delta_floor(target: dict, batch_size: int) -> Iterator[int]:
    """delta-rs's Arrow dataset scanned batch by batch, no SQL."""
    from deltalake import DeltaTable

    dataset = DeltaTable(target["connection"]["tables"]["crm.users"]).to_pyarrow_dataset()
    yield 0
    for batch in dataset.to_batches(columns=list(COLUMNS)):
        yield batch.num_rows


# (engine, line name) → (label, reader, runs with drt's Python)
LINES: dict[tuple[str, str], tuple[str, Callable[[dict, int], Iterator[int]], bool]] = {
    ("duckdb", "floor"): ("floor: DuckDB → Arrow reader, nothing else", duckdb_floor, False),
    ("duckdb", "wsync"): ("wsync duckdb: read-only file → Arrow batches", wsync_line, False),
    ("duckdb", "drt"): ("drt-core duckdb source: a dict per row", drt_line("duckdb"), True),
    ("postgres", "floor"): ("floor: COPY (binary) to the client, not decoded", postgres_floor, False),
    ("postgres", "wsync"): ("wsync postgres: COPY binary → ADBC → Arrow", wsync_line, False),
    ("postgres", "drt"): ("drt-core postgres source: a dict per row", drt_line("postgres"), True),
    ("redshift", "wsync"): ("wsync redshift: server-side cursor → Arrow", wsync_line, False),
    ("redshift", "drt"): ("drt-core redshift source: a dict per row", drt_line("redshift"), True),
    ("snowflake", "wsync"): ("wsync snowflake: connector Arrow batches", wsync_line, False),
    ("snowflake", "drt"): ("drt-core snowflake source: a dict per row", drt_line("snowflake"), True),
    ("bigquery", "wsync"): ("wsync bigquery: REST pages → Arrow", wsync_line, False),
    ("bigquery", "drt"): ("drt-core bigquery source: a dict per row", drt_line("bigquery"), True),
    ("delta", "floor"): ("floor: delta-rs Arrow dataset scan, no SQL", delta_floor, False),
    ("delta", "wsync"): ("wsync delta: DuckDB over the Arrow dataset", wsync_line, False),
    ("delta", "drt"): ("drt-core deltalake source: a dict per row", drt_line("delta"), True),
    ("databricks", "wsync"): ("wsync databricks SQL on local Spark", databricks_line, False),
}
NOT_RUN = {
    "databricks": "drt-core databricks source: not run, its connector needs a Databricks SQL endpoint",
}


def _max_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage: on Linux its peak is inherited through fork
    and exec, so a line would report the bench process's own peak."""
    status = Path("/proc/self/status").read_text()
    if "VmHWM:" in status:
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_line(engine: str, line: str, target: dict, batch_size: int) -> dict:
    """Read the model once in this process: rows, wall seconds and memory above the connected baseline."""
    warnings.simplefilter("ignore")  # drivers' warnings would interleave with the table
    reader = LINES[engine, line][1](target, batch_size)
    next(reader)
    baseline, start = _max_rss_mb(), time.perf_counter()
    rows = sum(reader)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "baseline_mb": baseline, "peak_mb": _max_rss_mb()}


def _in_subprocess(python: str, engine: str, line: str, target: dict, batch_size: int) -> dict:
    """One line in a fresh process, so each peak memory is its own; its last stderr line if it fails."""
    done = subprocess.run(
        [
            python,
            __file__,
            "--line",
            f"{engine}:{line}",
            "--target",
            json.dumps(target),
            "--batch-size",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        return {"failure": (done.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_engine(engine: str, rows: int, args: argparse.Namespace, folder: Path) -> None:
    """Load the engine, then run its lines and print them."""
    print(f"\n{engine}: {rows:,} rows in {STAND_INS[engine]}; load {os.getloadavg()[0]:.2f}")
    with ExitStack() as stack:
        if engine == "snowflake":
            stack.enter_context(snowflake_password())
        try:
            target = load(engine, users(rows), folder, stack)
        except Exception as error:  # an engine that cannot start here is reported, the others still run
            print(f"  not run: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            return
        results = {}
        for (name, line), (label, _, drt) in LINES.items():
            if name != engine:
                continue
            python = args.drt_python if drt else sys.executable
            result = results[line] = _in_subprocess(python, engine, line, target, args.batch_size)
            if "failure" in result:
                print(f"  {label:50} not run: {result['failure']}")
                continue
            rate = result["rows"] / result["seconds"]
            grown = result["peak_mb"] - result["baseline_mb"]
            print(
                f"  {label:50} {result['rows']:>10,} {result['seconds']:>7.2f} {rate:>10,.0f} "
                f"{result['peak_mb']:>7.0f} {grown:>5.0f}"
            )
        if engine in NOT_RUN:
            print(f"  {NOT_RUN[engine]}")
        if all("seconds" in results.get(line, {}) for line in ("wsync", "drt")):
            print(
                f"  wsync rows/s ÷ drt-core rows/s: {results['drt']['seconds'] / results['wsync']['seconds']:.1f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--bq-rows", type=int, default=100_000, help="rows for bigquery: the emulator reads ~10k rows/s"
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}"
    )
    parser.add_argument(
        "--batch-size", type=int, default=100_000, help="rows per batch (wsync) / fetch (drt)"
    )
    parser.add_argument(
        "--drt-python", default=sys.executable, help="a Python with drt-core (default: this one)"
    )
    parser.add_argument("--line", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.line:
        engine, line = args.line.split(":")
        print(json.dumps(run_line(engine, line, json.loads(args.target), args.batch_size)))
        return 0
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    if unknown := sorted(set(engines) - set(ENGINES)):
        parser.error(f"--engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    print(f"batch {args.batch_size:,}; columns: {MODEL}")
    print(f"  {'line':50} {'rows':>10} {'s':>7} {'rows/s':>10} {'peak MB':>7} {'+MB':>5}")
    with tempfile.TemporaryDirectory(prefix="wsync-bench-readers-") as folder:
        for engine in engines:
            workdir = Path(folder) / engine
            workdir.mkdir()
            bench_engine(engine, args.bq_rows if engine == "bigquery" else args.rows, args, workdir)
    if "bigquery" in engines:
        from wsync_dagster_tests.engines.bigquery import stop_emulator

        stop_emulator()
    return 0


if __name__ == "__main__":
    sys.exit(main())
