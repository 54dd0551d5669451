"""Warehouse readers: one module per warehouse, each with its connection model and its reader.

A new warehouse is one module: a `ConnectionSpec` subclass (its `type` literal, keys and `open`) added
to `CONNECTIONS`. Drivers are imported when a connection opens, never when sync files load.
"""

from __future__ import annotations

from wsync_dagster.warehouses.base import ConnectionSpec, EnvValue, Warehouse, WarehouseError
from wsync_dagster.warehouses.duckdb import DuckDBConnection
from wsync_dagster.warehouses.postgres import PostgresConnection, RedshiftConnection

# The registry: `connection.type` picks the model, and the model opens its reader.
CONNECTIONS: tuple[type[ConnectionSpec], ...] = (DuckDBConnection, PostgresConnection, RedshiftConnection)


def warehouse_types() -> list[str]:
    """The connection types wsync can read, as written in a sync file."""
    return [model.type_name() for model in CONNECTIONS]


def open_warehouse(spec) -> Warehouse:
    """The reader for a sync's connection."""
    return spec.connection.open(spec.base)


__all__ = [
    "CONNECTIONS",
    "ConnectionSpec",
    "EnvValue",
    "Warehouse",
    "WarehouseError",
    "open_warehouse",
    "warehouse_types",
]
