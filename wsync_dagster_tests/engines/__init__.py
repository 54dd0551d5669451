"""Warehouse engines that run here, for the conformance suite: one module each, named in ENGINES.

An engine module has `start(tmp_path) -> Engine` (a context manager is fine via a generator fixture)
whose `load(tables)` puts Arrow tables into the warehouse under `schema.table` names and returns the
`connection` mapping a sync file uses to read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa

# Each engine that runs on this machine; a new warehouse joins the suite by adding its module here.
ENGINES: tuple[str, ...] = (
    "duckdb",
    "snowflake",
    "bigquery",
    "delta",
    "databricks_sql_on_local_spark",
    "postgres",
    "redshift",
)


class Engine(Protocol):
    """A real warehouse engine, started for a test."""

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Create `schema.table` for each table with the engine's own types; the sync file's connection."""
        ...


def start(name: str, tmp_path: Path) -> Iterator[Engine]:
    """Start an engine by name for one test; stops it afterwards."""
    import importlib

    yield from importlib.import_module(f"wsync_dagster_tests.engines.{name}").start(tmp_path)
