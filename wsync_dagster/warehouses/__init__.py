"""Warehouse readers: one module per warehouse, each with its connection model and its reader.

A new warehouse is one module: a `ConnectionSpec` subclass (its `type` literal, keys and `open`) added
to `CONNECTIONS`. Drivers are imported when a connection opens, never when sync files load.
"""

from __future__ import annotations

from pathlib import Path

from wsync_dagster.warehouses.base import ConnectionSpec, EnvValue, Warehouse, WarehouseError
from wsync_dagster.warehouses.bigquery import BigQueryConnection
from wsync_dagster.warehouses.databricks import DatabricksConnection
from wsync_dagster.warehouses.delta import DeltaConnection
from wsync_dagster.warehouses.duckdb import DuckDBConnection
from wsync_dagster.warehouses.postgres import PostgresConnection, RedshiftConnection
from wsync_dagster.warehouses.snowflake import SnowflakeConnection

# The registry: `connection.type` picks the model, and the model opens its reader.
CONNECTIONS: tuple[type[ConnectionSpec], ...] = (
    DuckDBConnection,
    SnowflakeConnection,
    BigQueryConnection,
    DeltaConnection,
    DatabricksConnection,
    PostgresConnection,
    RedshiftConnection,
)


def warehouse_types() -> list[str]:
    """The connection types wsync can read, as written in a sync file."""
    return [model.type_name() for model in CONNECTIONS]


def open_connection(connection: ConnectionSpec, sync_file: Path) -> Warehouse:
    """The reader for a sync file's connection; paths are relative to the file's folder."""
    try:
        return connection.open(sync_file.parent)
    except WarehouseError as error:
        # The connection's fields are the sync file's: name the file.
        raise WarehouseError(f"{sync_file}: {error}") from None


def open_warehouse(spec) -> Warehouse:
    """The reader for a sync's connection outside a Dagster run, opened by its resource as runs open it."""
    # Imported here: Dagster is not imported when sync files load.
    from wsync_dagster.warehouses.resource import open_sync_warehouse

    return open_sync_warehouse(spec)


__all__ = [
    "CONNECTIONS",
    "ConnectionSpec",
    "EnvValue",
    "Warehouse",
    "WarehouseError",
    "open_connection",
    "open_warehouse",
    "warehouse_types",
]
