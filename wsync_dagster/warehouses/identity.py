"""Which connection a sync reads: its server (or files) for pools, its whole config for resource keys.

Values set by `{env: VAR}` appear as `$VAR`, never resolved: the names are the same in every process
that loads the definitions, and nothing read from the environment ends up in them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from wsync_dagster.warehouses.base import ConnectionSpec, EnvValue

if TYPE_CHECKING:
    from wsync_dagster.spec import SyncSpec

# The keys that say which server (and compute) a connection reaches; never a credential.
_SERVER_KEYS: dict[str, tuple[str, ...]] = {
    "postgres": ("host", "port", "database"),
    "redshift": ("host", "port", "database"),
    "snowflake": ("account", "host", "warehouse"),
    "bigquery": ("project", "api_endpoint"),
    "databricks": ("server_hostname", "http_path"),
}
_NOT_A_KEY_CHARACTER = re.compile(r"[^A-Za-z0-9_]+")


def server_identity(connection: ConnectionSpec, base: Path) -> str:
    """`<engine>:<identity>`: the server (or files) a connection reaches, without a credential."""
    kind = connection.type  # type: ignore[attr-defined]
    if kind == "duckdb":
        identity = _file_identity([_location(connection.path, base)])  # type: ignore[attr-defined]
    elif kind == "delta":
        tables = connection.tables.values()  # type: ignore[attr-defined]
        identity = _file_identity(sorted(_location(uri, base) for uri in tables))
    elif kind in _SERVER_KEYS:
        identity = "/".join(_server_parts(connection, _SERVER_KEYS[kind]))
    else:  # an engine added without a rule here: one identity for the whole engine, which is never too loose
        identity = "all"
    return f"{kind}:{''.join(identity.split())}"


def connection_config(connection: ConnectionSpec) -> str:
    """The connection as written, but for its name: two syncs whose configs are equal share one resource."""
    keys = connection.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"name"})
    return json.dumps(keys, sort_keys=True)


def connection_key(spec: SyncSpec) -> str:
    """The resource key of the sync's connection: its `name`, else one derived from its identity and config.

    The derived key reads `warehouse_<engine>_<server>_<digest>`; the digest of the whole config tells
    apart connections to one server with other users, schemas or timeouts.
    """
    connection = spec.connection
    if connection.name is not None:
        return connection.name
    identity = server_identity(connection, spec.base)
    digest = hashlib.sha256(f"{identity}\n{connection_config(connection)}".encode()).hexdigest()[:8]
    readable = _NOT_A_KEY_CHARACTER.sub("_", identity).strip("_")[:60].rstrip("_")
    return f"warehouse_{readable}_{digest}"


def _server_parts(connection, keys: tuple[str, ...]) -> list[str]:
    parts = []
    for key in keys:
        value = getattr(connection, key)
        if value is None and key == "port":
            value = connection.default_port  # a left-out port and the default written out are one server
        if value is not None:
            parts.append(_shown(value))
    return parts


def _location(value: str | Path | EnvValue, base: Path) -> str:
    """A file path relative to the sync file's folder made absolute; a URI or `$VAR` as written."""
    if isinstance(value, EnvValue):
        return _shown(value)
    text = str(value)
    return text if "://" in text else str((base / text).resolve())


def _file_identity(locations: list[str]) -> str:
    """The first file's stem, readable, and a short digest of every location, unique."""
    digest = hashlib.sha256("\n".join(locations).encode()).hexdigest()[:10]
    return f"{Path(locations[0]).stem}-{digest}"


def _shown(value: object) -> str:
    return f"${value.env}" if isinstance(value, EnvValue) else str(value)
