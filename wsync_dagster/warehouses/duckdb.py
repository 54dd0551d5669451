"""DuckDB warehouse: a local database file, opened read-only with external access disabled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from wsync_dagster.data_model import SourceTable, probe_sql, redact_literals
from wsync_dagster.warehouses.base import ConnectionSpec, EnvValue, WarehouseError, resolve

# No file, URL, extension or other database beyond the warehouse file itself: even a data model
# that slipped past the SQL check cannot read the local file system or the network.
_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


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
        return DuckDBWarehouse(self.file(base))

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

    def __init__(self, path: Path):
        import duckdb

        if not path.exists():
            raise WarehouseError(f"connection.path: the DuckDB warehouse file {path} does not exist")
        self.path = path
        self._error = duckdb.Error
        try:
            self._connection = duckdb.connect(str(path), read_only=True, config=_CONFIG)
        except duckdb.Error as error:
            raise WarehouseError(
                f"connection.path: cannot open {path} read-only: {_one_line(error)}"
            ) from None
        # Naive TIMESTAMP columns are UTC, as every window bound is.
        self._connection.execute("SET TimeZone = 'UTC'")
        self._connection.execute("SET lock_configuration = true")

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        query = probe_sql(sql)
        try:
            return self._connection.sql(query).to_arrow_table().schema
        except self._error as error:
            raise _model_error(error, query) from None

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows; DuckDB hands Arrow batches over without a copy per row."""
        try:
            reader = self._connection.sql(sql, params=list(params)).to_arrow_reader(batch_size)
            yield from reader
        except self._error as error:
            raise _model_error(error, sql) from None

    def close(self) -> None:
        """Close the file so other processes may write the warehouse again."""
        self._connection.close()


def _model_error(error: Exception, sql: str) -> WarehouseError:
    """The warehouse's error without the SQL: run storage and logs keep every error message."""
    message = redact_literals(_one_line(error), sql, DuckDBWarehouse.dialect)
    return WarehouseError(f"data_model.sql: the warehouse cannot run it: {message}")


def _one_line(error: Exception) -> str:
    """DuckDB's message on one line, without the `LINE n:` excerpt of the query that follows it."""
    message = str(error).split("\nLINE ", 1)[0]
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
