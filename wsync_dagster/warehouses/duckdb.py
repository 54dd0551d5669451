"""DuckDB warehouse: a local database file, opened read-only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from wsync_dagster.data_model import probe_sql
from wsync_dagster.warehouses.base import WarehouseError


class DuckDBWarehouse:
    """Reads a DuckDB file; read-only, so a model can never change the warehouse."""

    dialect = "duckdb"

    def __init__(self, path: Path):
        if not path.exists():
            raise WarehouseError(f"connection.path: the DuckDB warehouse file {path} does not exist")
        self.path = path
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
        except duckdb.Error as error:
            raise WarehouseError(f"data_model.sql: the warehouse cannot run it: {error}") from None

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows; DuckDB hands Arrow batches over without a copy per row."""
        try:
            reader = self._connection.sql(sql, params=list(params)).to_arrow_reader(batch_size)
        except duckdb.Error as error:
            raise WarehouseError(f"data_model.sql: the warehouse cannot run it: {error}") from None
        yield from reader

    def close(self) -> None:
        """Close the file so other processes may write the warehouse again."""
        self._connection.close()
