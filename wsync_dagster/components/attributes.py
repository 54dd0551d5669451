"""The attributes of a WarehouseSync component: a sync file's keys, published as JSON schema for editors and `dg`."""

from __future__ import annotations

from typing import Any

from pydantic import GetJsonSchemaHandler, RootModel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from wsync_dagster.spec import SyncSpec

# YAML reads an unquoted date or time as one, not as text: the schema takes both.
_MOMENTS = ("start", "historical_start")


class SyncFileAttributes(RootModel[Any]):
    """A sync file's keys: name, data_type, connection, data_model, mapping, sync, destination, checks."""

    # Dagster validates attributes with this model before the component is built. It takes any value, so a
    # bad sync never stops the code location: wsync validates it (errors naming file and field) and shows the
    # sync as an invalid_sync_files asset. Its JSON schema is the sync file's, so editors and `dg check defs`
    # (which reads that schema) check the keys as they are typed.

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        reference = handler(SyncSpec.__pydantic_core_schema__)
        schema = handler.resolve_ref_schema(reference)
        schema["properties"].pop("source_file", None)
        settings = handler.resolve_ref_schema(schema["properties"]["sync"])
        for field in _MOMENTS:
            # A date written in YAML arrives as a date, which a JSON "string" does not accept.
            settings["properties"][field] = {
                "description": f"sync.{field}: a date or a UTC time (2024-01-01)"
            }
        return reference
