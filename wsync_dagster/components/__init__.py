"""wsync's Dagster components, listed by `dg list components`: one sync, and a folder of sync files."""

from wsync_dagster.components.shared import wsync_code_location
from wsync_dagster.components.sync_folder import WarehouseSyncFolder
from wsync_dagster.components.warehouse_sync import WarehouseSync

__all__ = ["WarehouseSync", "WarehouseSyncFolder", "wsync_code_location"]
