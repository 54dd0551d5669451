"""What every warehouse reader offers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pyarrow as pa


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or cannot run the data model."""


class Warehouse(Protocol):
    """Runs read-only queries and returns Arrow."""

    dialect: str

    def columns(self, sql: str) -> pa.Schema:
        """The columns the query returns, found with a zero-row probe."""
        ...

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the query's rows as record batches in bounded memory."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
