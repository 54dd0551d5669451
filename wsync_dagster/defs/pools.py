"""Concurrency pools: one per warehouse connection, so syncs sharing a connection share its slots."""

from __future__ import annotations

import hashlib
from pathlib import Path

from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses import EnvValue

# The keys that say which server (and compute) a connection reaches; never a credential.
_SERVER_KEYS: dict[str, tuple[str, ...]] = {
    "postgres": ("host", "port", "database"),
    "redshift": ("host", "port", "database"),
    "snowflake": ("account", "host", "warehouse"),
    "bigquery": ("project", "api_endpoint"),
    "databricks": ("server_hostname", "http_path"),
}


def warehouse_pool(spec: SyncSpec) -> str:
    """The pool of the sync's connection: `warehouse:<engine>:<identity>`, the same for every sync on it.

    Values set by `{env: VAR}` appear as `$VAR`, never resolved: the name is the same in every process
    that loads the definitions, and nothing read from the environment ends up in it.
    """
    connection = spec.connection
    kind = connection.type
    if kind == "duckdb":
        identity = _file_identity([_location(connection.path, spec.base)])
    elif kind == "delta":
        identity = _file_identity(sorted(_location(uri, spec.base) for uri in connection.tables.values()))
    elif kind in _SERVER_KEYS:
        identity = "/".join(_server_parts(connection, _SERVER_KEYS[kind]))
    else:  # an engine added without a rule here: one pool for the whole engine, which is never too loose
        identity = "all"
    return f"warehouse:{kind}:{''.join(identity.split())}"


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
