"""Source assets: the warehouse tables a sync's data model reads, found by parsing its SQL."""

from __future__ import annotations

from dagster import AssetKey, AssetSpec

from wsync_dagster.data_model import source_tables
from wsync_dagster.spec import SyncSpec


def source_keys(spec: SyncSpec) -> list[AssetKey]:
    """Asset keys of the tables the model reads, by their full names in the warehouse."""
    connection = spec.connection
    return [
        AssetKey(["warehouse", *connection.table_path(table, spec.base)])
        for table in source_tables(spec.data_model.sql, connection.dialect)
    ]


def source_specs(specs: list[SyncSpec]) -> list[AssetSpec]:
    """One external asset per table, shared by every sync that reads it."""
    readers: dict[AssetKey, list[str]] = {}
    kinds: dict[AssetKey, str] = {}
    for spec in specs:
        for key in source_keys(spec):
            readers.setdefault(key, []).append(spec.name)
            kinds[key] = spec.connection.type
    return [
        AssetSpec(
            key,
            group_name="warehouse",
            description=f"Warehouse table read by {', '.join(names)}",
            kinds={kinds[key]},
        )
        for key, names in readers.items()
    ]
