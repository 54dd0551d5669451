"""The WarehouseSync component: a `defs.yaml` whose attributes are one sync file's keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dagster import Component, ComponentTypeSpec, Definitions, scaffold_with
from pydantic import BaseModel

from wsync_dagster.components.attributes import SyncFileAttributes
from wsync_dagster.components.shared import (
    code_location_definitions,
    invalid_component_spec,
    syncs_definitions,
)
from wsync_dagster.components.sync_template import WarehouseSyncScaffolder
from wsync_dagster.spec import InvalidSyncFile, SyncSpecError, load_sync_mapping
from wsync_dagster.sync_yaml import YamlFileError, read_yaml, shown_key

if TYPE_CHECKING:
    from dagster import ComponentLoadContext

COMPONENT_FILES = ("defs.yaml", "defs.yml", "component.yaml")


@scaffold_with(WarehouseSyncScaffolder)
class WarehouseSync(Component):
    """One wsync sync: its attributes are a sync file's keys (name, data_type, connection, data_model, mapping, sync, checks).

    Paths in it are relative to the defs.yaml. A sync that does not validate shows as an asset in the
    invalid_sync_files group, naming the file and field, and the other syncs load.
    """

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return SyncFileAttributes

    @classmethod
    def get_spec(cls) -> ComponentTypeSpec:
        return ComponentTypeSpec(
            tags=["wsync", "reverse-etl"],
            produces=["asset", "asset_check", "job", "schedule", "sensor", "resource"],
        )

    @classmethod
    def load(cls, attributes: BaseModel | None, context: ComponentLoadContext) -> WarehouseSync:
        # The attributes are read again from the file by build_defs, with wsync's YAML rules.
        return cls()

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        path = next((context.path / name for name in COMPONENT_FILES if (context.path / name).exists()), None)
        component = context.path.relative_to(context.defs_module_path).as_posix()
        if path is None:  # built from Python: nothing to read
            return code_location_definitions()
        try:
            spec = load_sync_mapping(path, _attributes(path))
        except SyncSpecError as error:
            name = _given_name(path) or context.path.name
            invalid = InvalidSyncFile(path, name, tuple(str(error).splitlines()))
            return Definitions.merge(
                Definitions(assets=[invalid_component_spec(invalid, component)]), code_location_definitions()
            )
        return syncs_definitions([spec], [])


def _attributes(path: Path) -> object:
    """The component's attributes, read with the same YAML rules as a sync file (each key once, real dates)."""
    try:
        document = read_yaml(path)
    except YamlFileError as error:
        raise SyncSpecError(str(error)) from None
    if not isinstance(document, dict) or not isinstance(document.get("attributes"), dict):
        raise SyncSpecError(
            f"{path}: attributes: required, a mapping of a sync file's keys (name, data_type, …)"
        )
    return document["attributes"]


def _given_name(path: Path) -> str | None:
    try:
        given = read_yaml(path)["attributes"]["name"]
    except (YamlFileError, KeyError, TypeError):
        return None
    # A name that is pasted text is not shown: the sync is then known by its folder's name.
    return given if isinstance(given, str) and shown_key(given) == given else None
