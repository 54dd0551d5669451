"""DuckDB warehouse: a local database file, opened read-only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from wsync_dagster.data_model import SourceTable, probe_sql
from wsync_dagster.warehouses.base import ConnectionSpec, EnvValue, WarehouseError, resolve


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
    """Reads a DuckDB file; read-only, so a model can never change the warehouse."""

    dialect = "duckdb"

    def __init__(self, path: Path):
        import duckdb

        if not path.exists():
            raise WarehouseError(f"connection.path: the DuckDB warehouse file {path} does not exist")
        self.path = path
        self._error = duckdb.Error
        try:
            self._connection = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as error:
            raise WarehouseError(f"connection.path: cannot open {path} read-only: {error}") from None
        # Naive TIMESTAMP columns are UTC, as every window bound is.
        self._connection.execute("SET TimeZone = 'UTC'")

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        try:
            return self._connection.sql(probe_sql(sql)).to_arrow_table().schema
        except self._error as error:
            raise WarehouseError(f"data_model.sql: the warehouse cannot run it: {error}") from None

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows; DuckDB hands Arrow batches over without a copy per row."""
        try:
            reader = self._connection.sql(sql, params=list(params)).to_arrow_reader(batch_size)
        except self._error as error:
            raise WarehouseError(f"data_model.sql: the warehouse cannot run it: {error}") from None
        yield from reader

    def close(self) -> None:
        """Close the file so other processes may write the warehouse again."""
        self._connection.close()
