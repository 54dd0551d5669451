"""The warehouse resources of a code location: one per connection, shared by the syncs on it."""

from __future__ import annotations

from wsync_dagster.spec import SyncSpec, connection_name_conflict
from wsync_dagster.warehouses.identity import connection_config
from wsync_dagster.warehouses.resource import (
    RESOURCE_CLASSES,
    WarehouseResource,
    open_sync_warehouse,
    warehouse_key,
    warehouse_resource,
)

__all__ = [
    "RESOURCE_CLASSES",
    "WarehouseResource",
    "open_sync_warehouse",
    "warehouse_key",
    "warehouse_resource",
    "warehouse_resources",
]


def warehouse_resources(specs: list[SyncSpec]) -> dict[str, WarehouseResource]:
    """One resource per connection key; two different connections under one name are an error naming both."""
    first: dict[str, SyncSpec] = {}
    for spec in specs:
        key = warehouse_key(spec)
        other = first.setdefault(key, spec)
        if other is not spec and not same_connection(other, spec):
            raise ValueError(connection_name_conflict(spec, other))
    return {key: warehouse_resource(spec) for key, spec in first.items()}


def same_connection(one: SyncSpec, other: SyncSpec) -> bool:
    """Equal connection keys: one resource serves both syncs (each opens it from its own sync file)."""
    return connection_config(one.connection) == connection_config(other.connection)
