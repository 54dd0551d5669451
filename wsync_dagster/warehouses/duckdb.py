"""DuckDB warehouse: a local database file, opened read-only with external access disabled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from wsync_dagster.data_model import probe_sql, redact_literals
from wsync_dagster.warehouses.base import WarehouseError

# No file, URL, extension or other database beyond the warehouse file itself: even a data model
# that slipped past the SQL check cannot read the local file system or the network.
_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


class DuckDBWarehouse:
    """Reads a DuckDB file; read-only, so a model can never change the warehouse or read past it."""

    dialect = "duckdb"

    def __init__(self, path: Path, sync_file: Path | None = None):
        # Errors name the sync file whose connection and data model they are about.
        self._sync_file = f"{sync_file}: " if sync_file else ""
        if not path.exists():
            raise WarehouseError(
                f"{self._sync_file}connection.path: the DuckDB warehouse file {path} does not exist"
            )
        self.path = path
        try:
            self._connection = duckdb.connect(str(path), read_only=True, config=_CONFIG)
        except duckdb.Error as error:
            raise WarehouseError(
                f"{self._sync_file}connection.path: cannot open {path} read-only: {_first_lines(error)}"
            ) from None
        # Naive TIMESTAMP columns are UTC, as every window bound is.
        self._connection.execute("SET TimeZone = 'UTC'")
        self._connection.execute("SET lock_configuration = true")

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        query = probe_sql(sql)
        try:
            return self._connection.sql(query).to_arrow_table().schema
        except duckdb.Error as error:
            raise self._model_error(error, query) from None

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows; DuckDB hands Arrow batches over without a copy per row."""
        try:
            reader = self._connection.sql(sql, params=list(params)).to_arrow_reader(batch_size)
            yield from reader
        except duckdb.Error as error:
            raise self._model_error(error, sql) from None

    def close(self) -> None:
        """Close the file so other processes may write the warehouse again."""
        self._connection.close()

    def _model_error(self, error: duckdb.Error, sql: str) -> WarehouseError:
        """The warehouse's error without the SQL it quotes: run logs and run storage keep error messages."""
        message = redact_literals(_first_lines(error), sql)
        return WarehouseError(f"{self._sync_file}data_model.sql: the warehouse cannot run it: {message}")


def _first_lines(error: duckdb.Error) -> str:
    """DuckDB's message on one line, without the `LINE n:` excerpt of the query that follows it."""
    message = str(error).split("\nLINE ", 1)[0]
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
