"""A connection as a Dagster resource: the one way a warehouse opens, in runs, sensors and the CLI.

Syncs with equal connections (or one `connection.name`) share one resource. Secrets stay `{env: VAR}`
in its config, shown as `EnvVar("VAR")`; the reader reads them when the connection opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, create_model

from wsync_dagster.warehouses import CONNECTIONS, ConnectionSpec, Warehouse, open_connection
from wsync_dagster.warehouses.identity import connection_key

if TYPE_CHECKING:
    from wsync_dagster.spec import SyncSpec


class WarehouseResource(ConfigurableResource):
    """Opens a warehouse reader from the connection keys in its config; one subclass per engine."""

    connection_model: ClassVar[type[ConnectionSpec]]

    def connection(self) -> ConnectionSpec:
        """The connection as the sync files wrote it, variables still unresolved."""
        keys = {
            field.alias or name: _setting(getattr(self, name))
            for name, field in self.connection_model.model_fields.items()
            if name != "type" and getattr(self, name) is not None
        }
        return self.connection_model.model_validate({"type": self.connection_model.type_name(), **keys})

    def open(self, sync_file: str | Path) -> Warehouse:
        """Connect for one sync: relative paths start at its file's folder, and errors name the file.

        The variables are read now, by the reader, never by Dagster's config system.
        """
        return open_connection(self.connection(), Path(sync_file))


def _resource_class(model: type[ConnectionSpec]) -> type[WarehouseResource]:
    """A resource class with the connection model's keys.

    The keys are typed `Any`: Dagster then keeps `{env: VAR}` as written instead of resolving it when
    the run starts, so a missing variable is the reader's error naming the sync file and the field.
    """
    keys: dict[str, Any] = {
        name: (Any, Field(None, alias=field.alias))
        for name, field in model.model_fields.items()
        if name != "type"
    }
    name = model.__name__.removesuffix("Connection") + "WarehouseResource"
    resource = create_model(name, __base__=WarehouseResource, __module__=__name__, **keys)
    resource.connection_model = model
    resource.__doc__ = f"A {model.type_name()} warehouse: {model.__doc__}"
    return resource


# One class per engine, named after it, so the UI's resource page says which warehouse a sync reads.
RESOURCE_CLASSES: dict[str, type[WarehouseResource]] = {
    model.type_name(): _resource_class(model) for model in CONNECTIONS
}
globals().update({cls.__name__: cls for cls in RESOURCE_CLASSES.values()})


def warehouse_key(spec: SyncSpec) -> str:
    """The resource key of a sync's warehouse: its connection's, shared by every sync on that connection."""
    return connection_key(spec)


def warehouse_resource(spec: SyncSpec) -> WarehouseResource:
    """The sync's connection as a resource: `{env: VAR}` becomes `EnvVar("VAR")`, shown by name only."""
    keys = spec.connection.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"type"})
    return RESOURCE_CLASSES[spec.connection.type](**{key: _env_vars(value) for key, value in keys.items()})


def open_sync_warehouse(spec: SyncSpec) -> Warehouse:
    """The sync's warehouse opened outside a Dagster run (the CLI, `wsync run`'s planning), by its resource."""
    return warehouse_resource(spec).open(spec.source_file)


def _env_vars(value: Any) -> Any:
    """`{env: VAR}` objects (nested ones too) as Dagster's EnvVar."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            return EnvVar(value["env"])
        return {key: _env_vars(item) for key, item in value.items()}
    return value


def _setting(value: Any) -> Any:
    """A config value back in sync-file form: EnvVar (before a run) or `{env: VAR}` (in one) as `{env: VAR}`."""
    if isinstance(value, EnvVar):
        return {"env": value.env_var_name}
    if isinstance(value, dict):
        return {key: _setting(item) for key, item in value.items()}
    return value
