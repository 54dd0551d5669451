"""What every wsync component builds on: one profile store resource; and what a code location of them adds."""

from __future__ import annotations

import logging
import os
import re
from functools import cache

from dagster import AssetKey, AssetSpec, Definitions, MetadataValue

from wsync_dagster.defs import build_sync_definitions
from wsync_dagster.defs.invalid import INVALID_GROUP, invalid_file_specs
from wsync_dagster.defs.recovery import build_recovery_sensor
from wsync_dagster.defs.resources import ProfileStoreResource
from wsync_dagster.defs.sources import source_specs
from wsync_dagster.defs.warehouses import (
    WarehouseResource,
    same_connection,
    warehouse_key,
    warehouse_resources,
)
from wsync_dagster.spec import InvalidSyncFile, SyncSpec, SyncSpecError, connection_name_conflict

# Set by `dg check defs` and `dagster definitions validate` while they load the code location.
VALIDATION_VARIABLE = "DAGSTER_IS_DEFS_VALIDATION_CLI"


@cache
def code_location_definitions() -> Definitions:
    """The profile store resource, the same object in every component, so that their merge holds one."""
    # Definitions.merge refuses two resources under one key unless they are the same object.
    return Definitions(resources={"profile_store": ProfileStoreResource(url=None)})


# Per connection key: the first sync that gave it, and its resource, one object for every component.
_warehouses: dict[str, tuple[SyncSpec, WarehouseResource]] = {}


def shared_warehouse_resources(specs: list[SyncSpec]) -> dict[str, WarehouseResource]:
    """One warehouse resource per connection across all components (the same object, as the merge needs)."""
    shared = {}
    for key, resource in warehouse_resources(specs).items():
        spec = next(spec for spec in specs if warehouse_key(spec) == key)
        first, kept = _warehouses.setdefault(key, (spec, resource))
        if first is not spec and not same_connection(first, spec):
            raise SyncSpecError(connection_name_conflict(spec, first))
        shared[key] = kept
    return shared


def syncs_definitions(specs: list[SyncSpec], invalid: list[InvalidSyncFile]) -> Definitions:
    """Each valid sync's definitions, the tables they read, and an asset per sync that does not load."""
    for file in invalid:
        logging.getLogger("wsync").warning(f"sync file not loaded: {file.errors[0]}")
    return Definitions.merge(
        *(build_sync_definitions(spec) for spec in specs),
        Definitions(
            assets=[*source_specs(specs), *invalid_file_specs(invalid)],
            resources=shared_warehouse_resources(specs),
        ),
        code_location_definitions(),
    )


def invalid_component_spec(file: InvalidSyncFile, component: str) -> AssetSpec:
    """The asset of a sync component that does not load, named after its folder (every one's file is defs.yaml)."""
    [spec] = invalid_file_specs([file])
    name = re.sub(r"[^A-Za-z0-9_]", "_", component)
    return spec.replace_attributes(key=AssetKey([INVALID_GROUP, name]))


def wsync_code_location(defs: Definitions) -> Definitions:
    """A defs folder's definitions as a wsync code location: with the run-recovery sensor (once: dg copies
    each component's sensors with its own metadata), and, under `dg check defs`, refused while a sync does not load."""
    defs = Definitions.merge(defs, Definitions(sensors=[build_recovery_sensor()]))
    if not os.environ.get(VALIDATION_VARIABLE):
        return defs
    errors = [
        f"{spec.metadata['sync_file'].value}:\n{spec.metadata['errors'].value}"
        for spec in defs.resolve_all_asset_specs()
        if spec.group_name == INVALID_GROUP and isinstance(spec.metadata.get("errors"), MetadataValue)
    ]
    if errors:
        raise SyncSpecError(
            f"{len(errors)} sync file(s) not loaded (each shows as an asset in the "
            f"{INVALID_GROUP} group):\n" + "\n".join(errors)
        )
    return defs
