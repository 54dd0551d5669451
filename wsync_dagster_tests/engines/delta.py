"""Delta Lake: tables written with deltalake (delta-rs) into the test's tmp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake


class DeltaEngine:
    """Delta tables under one folder, one per `schema.table`."""

    def __init__(self, root: Path):
        self.root = root

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Write each table as a Delta table at root/schema/table."""
        locations = {}
        for name, table in tables.items():
            path = self.root.joinpath(*name.split("."))
            write_deltalake(str(path), table, mode="overwrite")
            locations[name] = str(path)
        return {"type": "delta", "tables": locations}


def start(tmp_path: Path) -> Iterator[DeltaEngine]:
    """A lake folder in tmp."""
    yield DeltaEngine(tmp_path / "lake")
