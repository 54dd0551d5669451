"""Databricks SQL run on a local Spark session, standing in for a Databricks SQL warehouse.

What is real: the `databricks` connection and reader (wsync_dagster/warehouses/databricks.py) as a sync
uses them, the SQL they send (session settings, zero-row probe, window with named parameter markers),
the bounds serialized by databricks-sql-connector's own typed parameters, and Spark SQL, the engine
Databricks runs, executing it. What stands in: `databricks.sql.connect` is replaced for the test by a
DB-API connection to the local SparkSession, which binds each parameter as Databricks does on the
server (its string value cast to its type) through `EXECUTE IMMEDIATE … USING`. The connector cannot
talk to a local Spark Thrift server: see test_databricks.py.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import databricks.sql
import pyarrow as pa
from databricks.sql.exc import ServerOperationError

TOKEN_VARIABLE = "WSYNC_TEST_DATABRICKS_TOKEN"
TOKEN = "dapi-planted-local-spark-token-5c2b"
_spark = None


def spark_session():
    """One local SparkSession for the whole test session (starting the JVM takes seconds)."""
    global _spark
    if _spark is None:
        from pyspark.sql import SparkSession

        warehouse = tempfile.mkdtemp(prefix="wsync-spark-")
        atexit.register(shutil.rmtree, warehouse, True)
        _spark = (
            SparkSession.builder.master("local[1]")
            .appName("wsync-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            # Small queries: the quick JIT tier and one serial GC start faster than the defaults.
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.sql.warehouse.dir", warehouse)
            .getOrCreate()
        )
        _spark.sparkContext.setLogLevel("ERROR")
        # PySpark logs each failed query as JSON on stderr; the reader reports the error itself.
        logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    return _spark


class SparkCursor:
    """A DB-API cursor of databricks-sql-connector's shape, running the SQL on the local Spark session."""

    def __init__(self, spark):
        self._spark = spark
        self._rows: pa.Table | None = None
        self._offset = 0

    def execute(self, operation: str, parameters: Sequence | None = None) -> SparkCursor:
        """Run the statement, parameters bound the way Databricks binds them."""
        from pyspark.errors import PySparkException

        try:
            self._rows = self._spark.sql(bound_statement(operation, parameters or [])).toArrow()
        except PySparkException as error:
            raise ServerOperationError(str(error).splitlines()[0]) from None
        self._offset = 0
        return self

    def fetchmany_arrow(self, size: int) -> pa.Table:
        """The next `size` rows."""
        assert self._rows is not None
        rows = self._rows.slice(self._offset, size)
        self._offset += rows.num_rows
        return rows

    def fetchall_arrow(self) -> pa.Table:
        """The rows not fetched yet."""
        assert self._rows is not None
        return self.fetchmany_arrow(self._rows.num_rows)

    def close(self) -> None:
        """Forget the result."""
        self._rows = None

    def __enter__(self) -> SparkCursor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SparkConnection:
    """A DB-API connection of databricks-sql-connector's shape, on the local Spark session."""

    def __init__(self, spark):
        self._spark = spark

    def cursor(self) -> SparkCursor:
        """A new cursor."""
        return SparkCursor(self._spark)

    def close(self) -> None:
        """Nothing to release: the Spark session is shared."""


def bound_statement(operation: str, parameters: Sequence) -> str:
    """The statement as Spark runs it with typed named parameters: EXECUTE IMMEDIATE … USING CAST(…)."""
    if not parameters:
        return operation
    bindings = []
    for parameter in parameters:
        sent = parameter.as_tspark_param(named=True)  # exactly what the connector puts on the wire
        bindings.append(f"CAST({_string(sent.value.stringValue)} AS {sent.type}) AS {sent.name}")
    return f"EXECUTE IMMEDIATE {_string(operation)} USING {', '.join(bindings)}"


def _string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class LocalSparkEngine:
    """Tables created in the local Spark session with Databricks' own types."""

    def __init__(self, spark):
        self.spark = spark

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Create each schema.table; naive Arrow timestamps become TIMESTAMP_NTZ, zoned ones TIMESTAMP."""
        from pyspark.sql import functions as F

        for name, table in tables.items():
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {name.split('.')[0]}")
            frame = self.spark.createDataFrame(table)
            naive = [f.name for f in table.schema if pa.types.is_timestamp(f.type) and f.type.tz is None]
            frame = frame.select(
                *(F.col(c).cast("timestamp_ntz").alias(c) if c in naive else F.col(c) for c in frame.columns)
            )
            frame.write.mode("overwrite").saveAsTable(name)
        return connection()


def connection() -> dict:
    """The sync file's connection: a Databricks SQL warehouse, the token from the environment."""
    return {
        "type": "databricks",
        "server_hostname": "dbc-local-spark.cloud.databricks.com",
        "http_path": "/sql/1.0/warehouses/local-spark",
        "access_token": {"env": TOKEN_VARIABLE},
    }


@contextmanager
def standing_in_for_databricks() -> Iterator[LocalSparkEngine]:
    """While open, databricks.sql.connect reaches the local Spark session; the token is set in the env."""
    spark = spark_session()
    received: list[str] = []

    def connect(server_hostname: str, http_path: str, access_token: str | None = None, **kwargs):
        received.append(access_token or "")
        return SparkConnection(spark)

    with (
        mock.patch.dict(os.environ, {TOKEN_VARIABLE: TOKEN}),
        mock.patch.object(databricks.sql, "connect", connect),
    ):
        yield LocalSparkEngine(spark)
    # The reader passes the token from the environment variable, as it would to Databricks.
    assert set(received) <= {TOKEN}


def start(tmp_path: Path) -> Iterator[LocalSparkEngine]:
    """The shared local Spark session, standing in for Databricks for one test."""
    with standing_in_for_databricks() as engine:
        yield engine
