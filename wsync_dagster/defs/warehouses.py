"""Each sync's warehouse as a Dagster resource, configured from its connection, secrets as `EnvVar`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, create_model

from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses import CONNECTIONS, ConnectionSpec, Warehouse, open_connection


class WarehouseResource(ConfigurableResource):
    """Opens a sync's warehouse reader from the connection keys in its config; one subclass per engine."""

    # The sync file: relative paths in the connection start at its folder, and errors name it.
    sync_file: str
    connection_model: ClassVar[type[ConnectionSpec]]

    def connection(self) -> ConnectionSpec:
        """The connection as the sync file wrote it, variables still unresolved."""
        keys = {
            field.alias or name: _setting(getattr(self, name))
            for name, field in self.connection_model.model_fields.items()
            if name != "type" and getattr(self, name) is not None
        }
        return self.connection_model.model_validate({"type": self.connection_model.type_name(), **keys})

    def open(self) -> Warehouse:
        """Connect: the variables are read now, by the reader, never by Dagster's config system."""
        return open_connection(self.connection(), Path(self.sync_file))


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
    """The resource key of a sync's warehouse."""
    return f"{spec.name}_warehouse"


def warehouse_resource(spec: SyncSpec) -> WarehouseResource:
    """The sync's connection as a resource: `{env: VAR}` becomes `EnvVar("VAR")`, shown by name only."""
    keys = spec.connection.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"type"})
    return RESOURCE_CLASSES[spec.connection.type](
        sync_file=str(spec.source_file), **{key: _env_vars(value) for key, value in keys.items()}
    )


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
