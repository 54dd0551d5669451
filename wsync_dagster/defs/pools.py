"""Concurrency pools: one per warehouse connection, so syncs sharing a connection share its slots."""

from __future__ import annotations

from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses.identity import server_identity


def warehouse_pool(spec: SyncSpec) -> str:
    """The pool of the sync's connection: `warehouse:<engine>:<identity>`, the same for every sync on it.

    Values set by `{env: VAR}` appear as `$VAR`, never resolved: the name is the same in every process
    that loads the definitions, and nothing read from the environment ends up in it.
    """
    return f"warehouse:{server_identity(spec.connection, spec.base)}"
