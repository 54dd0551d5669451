"""What every warehouse offers: a typed connection in the sync file, and a reader that returns Arrow."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol, get_args

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

from wsync_dagster.cancellation import QueryStopped, QueryWatch
from wsync_dagster.data_model import SourceTable
from wsync_dagster.durations import describe_duration, parse_duration

# How long one read of a data model may take before it is cancelled on the warehouse, unless the
# connection's query_timeout says otherwise (Hightouch's default, too).
DEFAULT_QUERY_TIMEOUT = timedelta(hours=6)
QUERY_TIMEOUT_FORM = "a duration above 0s such as 30m, 6h or 1d (default 6h)"
# A connection's name is its Dagster resource key; Dagster keeps these two keys for its own resources.
RESERVED_NAMES = ("profile_store", "io_manager")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
NAME_FORM = (
    "a name of letters, digits and _ that starts with a letter, up to 63 characters, such as "
    f"crm_warehouse (not {' or '.join(RESERVED_NAMES)})"
)


def one_line(text: str, separator: str = " ") -> str:
    """A connector's message on one line: each line stripped, blank ones left out, joined by `separator`."""
    return separator.join(line.strip() for line in text.splitlines() if line.strip())


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or cannot run the data model."""


def query_timeout_error(warehouse: str, timeout: timedelta) -> WarehouseError:
    """The one line for a read cancelled at the connection's query_timeout."""
    return WarehouseError(
        f"connection.query_timeout: the data model's query on the {warehouse} ran longer than "
        f"{describe_duration(timeout)} and was cancelled; raise query_timeout or make the model faster"
    )


def cancelled_error(watch: QueryWatch, warehouse: str, timeout: timedelta) -> BaseException | None:
    """Why a cancelled query failed: a stop signal (an interrupt) or its query_timeout; None when neither."""
    if watch.stopped:
        return QueryStopped(f"the query on the {warehouse} was cancelled")
    if watch.timed_out:
        return query_timeout_error(warehouse, timeout)
    return None


class EnvValue(BaseModel):
    """A value read from an environment variable when the connection opens: `{env: VAR_NAME}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str


Setting = str | EnvValue


def resolve(value: Setting | None, field: str) -> str | None:
    """A setting's value; an unset variable is an error naming the field and the variable, never a value."""
    if not isinstance(value, EnvValue):
        return value
    if value.env not in os.environ:
        raise WarehouseError(f"connection.{field}: environment variable {value.env} is not set")
    return os.environ[value.env]


class Warehouse(Protocol):
    """Runs read-only queries and returns Arrow."""

    dialect: str

    def columns(self, sql: str) -> pa.Schema:
        """The columns the query returns, found with a zero-row probe."""
        ...

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the query's rows as record batches in bounded memory; params fill the `?` placeholders."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class ConnectionSpec(BaseModel):
    """A sync file's `connection`: one subclass per warehouse type, in the union `spec.Connection`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dialect: ClassVar[str]  # sqlglot's name for the warehouse's SQL

    # Syncs whose connections have one name share one warehouse resource of that key.
    name: str | None = None
    query_timeout: timedelta = DEFAULT_QUERY_TIMEOUT

    @field_validator("name", mode="before")
    @classmethod
    def _resource_name(cls, value: Any) -> str | None:
        # The value is never repeated: it may be text pasted in the wrong place.
        if value is not None and (
            not isinstance(value, str) or not _NAME.fullmatch(value) or value in RESERVED_NAMES
        ):
            raise ValueError(NAME_FORM)
        return value

    @field_validator("query_timeout", mode="before")
    @classmethod
    def _positive_duration(cls, value: Any) -> timedelta:
        if isinstance(value, str):
            try:
                value = parse_duration(value)
            except ValueError:
                raise ValueError(QUERY_TIMEOUT_FORM) from None
        if not isinstance(value, timedelta) or value <= timedelta(0):
            raise ValueError(QUERY_TIMEOUT_FORM)
        return value

    @field_serializer("query_timeout", when_used="json")
    def _written(self, value: timedelta) -> str:
        return describe_duration(value)

    @classmethod
    def type_name(cls) -> str:
        """The `type` this model stands for in a sync file."""
        return get_args(cls.model_fields["type"].annotation)[0]

    def open(self, base: Path) -> Warehouse:
        """Connect (drivers are imported here, not at load); paths are relative to `base`."""
        raise NotImplementedError

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """The table's full name in the warehouse (database, schema, table), defaults filled in."""
        return table.path
