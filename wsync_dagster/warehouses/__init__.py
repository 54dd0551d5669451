"""Warehouse readers: one module per warehouse behind the `Warehouse` protocol."""

from __future__ import annotations

from wsync_dagster.warehouses.base import Warehouse, WarehouseError
from wsync_dagster.warehouses.duckdb import DuckDBWarehouse


def open_warehouse(spec) -> Warehouse:
    """The reader for a sync's connection."""
    connection = spec.connection
    if connection.type == "duckdb":
        return DuckDBWarehouse(spec.resolve_path(connection.path), spec.source_file)
    raise WarehouseError(f"{spec.source_file}: connection.type: {connection.type} has no reader")


__all__ = ["DuckDBWarehouse", "Warehouse", "WarehouseError", "open_warehouse"]
