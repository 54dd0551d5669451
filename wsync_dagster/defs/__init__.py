"""Dagster wiring: one sync spec becomes source assets, partitioned assets, a job, a trigger and checks."""

from __future__ import annotations

import logging

from dagster import AssetSelection, Definitions, SensorDefinition, define_asset_job

from wsync_dagster.defs.assets import build_sync_assets, delivery_key, forward_keys, mapped_key
from wsync_dagster.defs.invalid import invalid_file_specs
from wsync_dagster.defs.recovery import build_recovery_sensor
from wsync_dagster.defs.resources import ProfileStoreResource
from wsync_dagster.defs.sources import source_specs
from wsync_dagster.defs.warehouses import warehouse_resources
from wsync_dagster.modes import sync_mode
from wsync_dagster.spec import SyncFolder, SyncSpec


def sync_job_name(spec: SyncSpec) -> str:
    """Name of the job that runs one sync."""
    return f"{spec.name}_job"


def build_sync_definitions(spec: SyncSpec) -> Definitions:
    """Assets, job and trigger of one sync; its warehouse resource comes with the location's (`build_definitions`)."""
    job = define_asset_job(
        sync_job_name(spec),
        selection=AssetSelection.assets(mapped_key(spec), delivery_key(spec), *forward_keys(spec)),
        description=spec.description or None,
    )
    trigger = sync_mode(spec).trigger(job)
    is_sensor = isinstance(trigger, SensorDefinition)
    return Definitions(
        assets=build_sync_assets(spec),
        jobs=[job],
        schedules=[trigger] if trigger is not None and not is_sensor else None,
        sensors=[trigger] if is_sensor else None,
    )


def build_definitions(specs: list[SyncSpec], store_url: str | None = None) -> Definitions:
    """Every sync's definitions, one warehouse resource per connection, the shared source assets, and the store."""
    resources = {"profile_store": ProfileStoreResource(url=store_url), **warehouse_resources(specs)}
    return Definitions.merge(
        *(build_sync_definitions(spec) for spec in specs),
        Definitions(assets=source_specs(specs), resources=resources),
    )


def build_folder_definitions(folder: SyncFolder) -> Definitions:
    """The code location: the syncs that load, an asset per sync file that does not, and run recovery."""
    for file in folder.invalid:
        logging.getLogger("wsync").warning(f"sync file not loaded: {file.errors[0]}")
    return Definitions.merge(
        build_definitions(folder.specs),
        Definitions(assets=invalid_file_specs(folder.invalid), sensors=[build_recovery_sensor()]),
    )
