"""Change feeds for `mode: cdc`: a table's versions, its snapshot at one, and its changes between two.

One module per warehouse that keeps a feed: Delta's Change Data Feed read with delta-rs (`delta`),
Databricks' `table_changes` (`databricks`), Snowflake's change tracking (`snowflake`). Each reads the
data model over its feed with the same three columns of its own (`feed`), so a cdc run maps the rows the
same way whichever warehouse they came from: deletes keep only their identity columns, so that the
mapping turns them into tombstones of this sync's attributes; update pre-images are left out; event
syncs take inserts only.
"""

from __future__ import annotations

from collections.abc import Callable

from wsync_dagster.changes.feed import (
    CHANGE,
    DELETE,
    ORDER,
    VERSION,
    ChangeFeed,
    ChangeFeedError,
    VersionWindow,
    change_rows_sql,
)
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses import Warehouse, open_warehouse


def change_feed(spec: SyncSpec, open_reader: Callable[[], Warehouse] | None = None) -> ChangeFeed:
    """The change feed of a cdc sync's table; `open_reader` opens its warehouse (a run's resource)."""
    from wsync_dagster.changes.databricks import DatabricksFeed
    from wsync_dagster.changes.delta import DeltaFeed
    from wsync_dagster.changes.snowflake import SnowflakeFeed

    opener = open_reader or (lambda: open_warehouse(spec))
    kind = spec.connection.type
    if kind == "delta":
        return DeltaFeed(spec)
    if kind == "databricks":
        return DatabricksFeed(spec, opener)
    if kind == "snowflake":
        return SnowflakeFeed(spec, opener)
    raise ChangeFeedError(f"{spec.name}: a {kind} connection has no change feed wsync reads")


__all__ = [
    "CHANGE",
    "DELETE",
    "ORDER",
    "VERSION",
    "ChangeFeed",
    "ChangeFeedError",
    "VersionWindow",
    "change_feed",
    "change_rows_sql",
]
