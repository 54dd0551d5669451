"""DuckDB warehouse: a local database file, opened read-only with external access disabled."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from wsync_dagster.cancellation import QueryStopped, QueryWatch, watched_query
from wsync_dagster.data_model import SourceTable, probe_sql, redact_literals
from wsync_dagster.warehouses.base import (
    DEFAULT_QUERY_TIMEOUT,
    ConnectionSpec,
    EnvValue,
    WarehouseError,
    one_line,
    query_timeout_error,
    resolve,
)

# No file, URL, extension or other database beyond the warehouse file itself: even a data model
# that slipped past the SQL check cannot read the local file system or the network.
_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
# DuckDB runs in our process: a read that sorts (a window is read in iterator order) spills to a temp
# folder past this, so memory stays bounded however big the model (64MB: a 1M-event window sorted and mapped
# peaked at 501 MB of RSS, 533 MB with 128MB, in the same time).
MEMORY_LIMIT = "64MB"


class DuckDBConnection(ConnectionSpec):
    """A DuckDB database file, opened read-only."""

    dialect = "duckdb"
    type: Literal["duckdb"]
    path: Path | EnvValue

    def file(self, base: Path) -> Path:
        """The database file, relative to the sync file's folder."""
        path = Path(resolve(self.path, "path")) if isinstance(self.path, EnvValue) else self.path
        return path if path.is_absolute() else (base / path).resolve()

    def open(self, base: Path) -> DuckDBWarehouse:
        """Open the file read-only."""
        return DuckDBWarehouse(self.file(base), self.query_timeout)

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """DuckDB names a file's database after the file: catalog.schema.table."""
        try:
            catalog = self.file(base).stem
        except WarehouseError:
            catalog = f"${self.path.env}" if isinstance(self.path, EnvValue) else "duckdb"
        return (table.catalog or catalog, table.schema or "main", table.name)


class DuckDBWarehouse:
    """Reads a DuckDB file; read-only, so a model can never change the warehouse or read past it."""

    dialect = "duckdb"
    # DuckDB has no statement timeout of its own: a timer interrupts a read that outlives this.
    query_timeout = DEFAULT_QUERY_TIMEOUT
    where = "duckdb warehouse"
    _spill: str | None = None  # the folder a big sort spills to, removed on close

    def __init__(self, path: Path, query_timeout: timedelta = DEFAULT_QUERY_TIMEOUT):
        import duckdb

        if not path.exists():
            raise WarehouseError(f"connection.path: the DuckDB warehouse file {path} does not exist")
        self.path = path
        self.query_timeout = query_timeout
        self.where = f"duckdb warehouse {path}"
        self._error = duckdb.Error
        self._spill = tempfile.mkdtemp(prefix="wsync-duckdb-")
        config = {**_CONFIG, "memory_limit": MEMORY_LIMIT, "temp_directory": self._spill}
        try:
            self._connection = duckdb.connect(str(path), read_only=True, config=config)
        except duckdb.Error as error:
            shutil.rmtree(self._spill, ignore_errors=True)
            raise WarehouseError(
                f"connection.path: cannot open {path} read-only: {_message(error)}"
            ) from None
        # Naive TIMESTAMP columns are UTC, as every window bound is.
        self._connection.execute("SET TimeZone = 'UTC'")
        self._connection.execute("SET lock_configuration = true")

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        query = probe_sql(sql)
        with self._watched() as watch:
            try:
                return self._connection.sql(query).to_arrow_table().schema
            except Exception as error:
                raise self._query_error(error, query, watch) from None

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows; DuckDB hands Arrow batches over without a copy per row."""
        with self._watched() as watch:
            try:
                reader = self._connection.sql(sql, params=list(params)).to_arrow_reader(batch_size)
                yield from reader
            except Exception as error:
                raise self._query_error(error, sql, watch) from None

    def register(self, name: str, table: pa.Table) -> None:
        """Let the queries of this connection read an Arrow table of ours by name (a view: the file is not
        written, and the name is gone when the connection closes)."""
        self._connection.register(name, table)

    def close(self) -> None:
        """Close the file so other processes may write the warehouse again."""
        self._connection.close()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)

    def _watched(self):
        """A stop signal or the query_timeout interrupts the query (or the stream of its rows)."""
        return watched_query(self._connection.interrupt, self.query_timeout)

    def _query_error(self, error: Exception, sql: str, watch: QueryWatch) -> BaseException:
        """Why the query failed: it was stopped, it ran out of time, or the warehouse refused it."""
        if watch.stopped:
            return QueryStopped(f"the query on the {self.where} was cancelled")
        if watch.timed_out:
            return query_timeout_error(self.where, self.query_timeout)
        if isinstance(error, self._error):
            return _model_error(error, sql)
        return error


def _model_error(error: Exception, sql: str) -> WarehouseError:
    """The warehouse's error without the SQL: run storage and logs keep every error message."""
    message = redact_literals(_message(error), sql, DuckDBWarehouse.dialect)
    return WarehouseError(f"data_model.sql: the warehouse cannot run it: {message}")


def _message(error: Exception) -> str:
    """DuckDB's message on one line, without the `LINE n:` excerpt of the query that follows it."""
    return one_line(str(error).split("\nLINE ", 1)[0])
