"""Whether this process can run a sync: the environment variables its `{env: VAR}` settings name, set or not.

The process that loads the code location (the UI's) starts the runs of its schedules and backfills: a variable
unset there fails every run. Found when the definitions load, it is said on the sync's assets and before a
run reads anything, by the variable's name (never a value).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pydantic import BaseModel

from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses.base import EnvValue

# The asset metadata naming the unset variables: what the UI shows and `wsync backfill` reads.
UNSET_VARIABLES = "unset_environment_variables"
CANNOT_RUN = "cannot_run"


def _env_settings(value: object, where: str) -> Iterator[tuple[str, str]]:
    """(field, variable) for every `{env: VAR}` in a setting, nested ones too."""
    if isinstance(value, EnvValue):
        yield where, value.env
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _env_settings(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _env_settings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _env_settings(item, f"{where}[{index}]")


def unset_variables(spec: SyncSpec) -> dict[str, str]:
    """Per unset variable the sync's settings name, the field that names it (e.g. connection.password)."""
    return {
        variable: field
        for field, variable in _env_settings(spec.connection, "connection")
        if variable not in os.environ
    }


def cannot_run(spec: SyncSpec) -> str | None:
    """One line saying which variables this process lacks to run the sync, and what to do; None when none."""
    unset = unset_variables(spec)
    if not unset:
        return None
    named = ", ".join(f"{field}: environment variable {variable}" for variable, field in unset.items())
    verb = "is" if len(unset) == 1 else "are"
    return (
        f"{spec.source_file}: {named} {verb} not set in the process that runs the sync {spec.name} (for the "
        "UI's runs, "
        "where `dagster dev` or the code server starts: set it there and restart it); nothing ran"
    )
