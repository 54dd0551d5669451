"""wsync: warehouse-to-profile syncs as a Dagster code location; its components are `wsync_dagster.WarehouseSync`
and `wsync_dagster.WarehouseSyncFolder` (the `dagster_dg_cli.registry_modules` entry point names this package)."""

from typing import Any

_COMPONENTS = ("WarehouseSync", "WarehouseSyncFolder")


def __getattr__(name: str) -> Any:
    # Imported on first use, so `wsync` commands that never touch components do not pay for them.
    if name in _COMPONENTS:
        from wsync_dagster import components

        return getattr(components, name)
    raise AttributeError(f"module 'wsync_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_COMPONENTS])
