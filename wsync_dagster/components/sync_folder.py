"""The WarehouseSyncFolder component: every sync file of a folder (`syncs/`, WSYNC_SYNCS_DIR), unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dagster import Component, ComponentTypeSpec, Definitions, Model, Resolvable

from wsync_dagster.components.shared import syncs_definitions
from wsync_dagster.settings import syncs_dir
from wsync_dagster.spec import SyncFolder, load_sync_folder

if TYPE_CHECKING:
    from dagster import ComponentLoadContext


class WarehouseSyncFolder(Component, Resolvable, Model):
    """Every sync file (*.yaml) of a folder, as the `wsync` commands read them.

    `path` is relative to this defs.yaml; without it, the folder is WSYNC_SYNCS_DIR, else ./syncs (from the
    working directory, as `wsync` reads it). A file that does not load shows as an asset in the
    invalid_sync_files group and never stops the others.
    """

    path: str | None = None

    @classmethod
    def get_spec(cls) -> ComponentTypeSpec:
        return ComponentTypeSpec(
            tags=["wsync", "reverse-etl"],
            produces=["asset", "asset_check", "job", "schedule", "sensor", "resource"],
        )

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        folder = self.folder(context.path)
        loaded = load_sync_folder(folder) if folder.is_dir() else SyncFolder([], [])
        return syncs_definitions(loaded.specs, loaded.invalid)

    def folder(self, component_dir: Path) -> Path:
        """The sync folder this component reads."""
        return (component_dir / self.path).resolve() if self.path else syncs_dir()
