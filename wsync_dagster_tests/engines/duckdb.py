"""DuckDB: a database file in the test's tmp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa


class DuckDBEngine:
    """Tables written into one DuckDB file."""

    def __init__(self, path: Path):
        self.path = path

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Create each schema.table from its Arrow table."""
        with duckdb.connect(str(self.path)) as connection:
            for name, table in tables.items():
                schema = name.split(".")[0]
                connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                connection.register("incoming", table)
                connection.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
                connection.unregister("incoming")
        return {"type": "duckdb", "path": str(self.path)}


def start(tmp_path: Path) -> Iterator[DuckDBEngine]:
    """A warehouse file in tmp."""
    yield DuckDBEngine(tmp_path / "warehouse.duckdb")
