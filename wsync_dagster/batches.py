"""Mapped batches: the Arrow contract between the mapping and the writers, and its files on disk."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wsync_dagster.disk_space import DiskFullError, is_disk_full

# A mapped batch is an Arrow record batch with these columns (all nullable unless said):
ROW = "_row"  # int64, not null: ordinal of the row in the read, in iterator order
VERSION = "_version"  # int64, not null: order-safety version (iterator in µs, change or run version)
IDENTITY_KEY = "_identity_key"  # string, not null: canonical JSON of the row's identities
ROW_KEY = "_row_key"  # string: full mode, incremental users; the row's stable key (hash of its identities)
FINGERPRINT = "_fingerprint"  # string: with ROW_KEY, hash of all the row maps to (incremental: and version)
DELETE = "_delete"  # bool: cdc user syncs only, the row removes what the sync set and creates nothing
IDENTITY_PREFIX = "identity."  # "identity.<type>": string, one column per identity type mapped
ATTRIBUTE_PREFIX = "attribute."  # "attribute.<name>": JSON text; NULL removes the attribute
EVENT_ID = "event.id"  # string, not null in event batches: source_message_id or a row hash
EVENT_TYPE = "event.type"  # string: custom_event | screen_view | commerce_event
EVENT_NAME = "event.name"  # string
EVENT_TIMESTAMP_MS = "event.timestamp_ms"  # int64, UTC epoch milliseconds
EVENT_DATA = "event.data"  # string: JSON object of the event's `data` (mParticle event shape)

# A rejects batch: rows that could not be mapped, kept with why.
REJECT_SCHEMA = pa.schema(
    [(ROW, pa.int64()), (VERSION, pa.int64()), ("reason", pa.string()), ("row", pa.string())]
)

# A delivery removes its partition's files; files never delivered (a mapping materialized alone, a
# run killed between the store's commit and the removal) are removed this long after they were written.
RETENTION = timedelta(days=7)
TEMPORARY_SUFFIX = ".tmp"
# The most rows of a row group in a batch file: the delivery holds one row group at a time.
ROW_GROUP_ROWS = 50_000
# Footer key of the mapped file: the rows the warehouse found unchanged and left out (unchanged_rows.py).
UNCHANGED_ROWS_KEY = "wsync.unchanged_rows"


def identity_columns(schema: pa.Schema) -> dict[str, str]:
    """Identity type → column name, for the identity columns of a mapped schema."""
    return {n[len(IDENTITY_PREFIX) :]: n for n in schema.names if n.startswith(IDENTITY_PREFIX)}


def attribute_columns(schema: pa.Schema) -> dict[str, str]:
    """Attribute name → column name, for the attribute columns of a mapped schema."""
    return {n[len(ATTRIBUTE_PREFIX) :]: n for n in schema.names if n.startswith(ATTRIBUTE_PREFIX)}


def is_event_schema(schema: pa.Schema) -> bool:
    """True when the mapped schema carries events."""
    return EVENT_ID in schema.names


class BatchFile:
    """One partition's mapped rows (and rejects) as Parquet files, written and read in batches."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.mapped_path = directory / f"{name}.mapped.parquet"
        self.rejects_path = directory / f"{name}.rejects.parquet"

    def writer(self) -> BatchFileWriter:
        """A writer that replaces this partition's files atomically on close."""
        return BatchFileWriter(self)

    def exists(self) -> bool:
        """True when the mapped file has been written."""
        return self.mapped_path.exists()

    def mapped_batches(self, batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream the mapped rows, one row group at a time: what `iter_batches` had read stayed allocated
        until its end (10M events held 500 MB), while a row group read alone is freed when done with."""
        yield from _row_groups(self.mapped_path, batch_size)

    def reject_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the rejected rows, a row group at a time."""
        if self.rejects_path.exists():
            yield from _row_groups(self.rejects_path, ROW_GROUP_ROWS)

    def mapped_rows(self) -> int:
        """How many mapped rows the file holds, from its footer."""
        return pq.ParquetFile(self.mapped_path).metadata.num_rows

    def unchanged_rows(self) -> int:
        """How many rows the warehouse found unchanged and left out of the file, from its footer."""
        metadata = pq.ParquetFile(self.mapped_path).metadata.metadata or {}
        return int(metadata.get(UNCHANGED_ROWS_KEY.encode(), b"0"))

    def column(self, name: str) -> pa.Array:
        """One column of the mapped rows, read alone."""
        return pq.read_table(self.mapped_path, columns=[name]).column(name).combine_chunks()

    def rejects(self) -> pa.Table:
        """All rejected rows of the partition."""
        if not self.rejects_path.exists():
            return REJECT_SCHEMA.empty_table()
        return pq.read_table(self.rejects_path)

    def remove(self) -> None:
        """Remove the partition's files: done once the store holds what they carry."""
        for path in (self.mapped_path, self.rejects_path):
            path.unlink(missing_ok=True)


def _row_groups(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    reader = pq.ParquetFile(path)
    for group in range(reader.num_row_groups):
        yield from reader.read_row_group(group).to_batches(batch_size)


def remove_stale_files(directory: Path, retention: timedelta = RETENTION) -> list[Path]:
    """Remove temporary files whose writer is gone and batch files older than the retention."""
    if not directory.is_dir():
        return []
    cutoff = time.time() - retention.total_seconds()
    removed = []
    for path in directory.iterdir():
        if path.name.endswith(TEMPORARY_SUFFIX):
            stale = _remove_if_abandoned(path)
        else:
            stale = path.name.endswith(".parquet") and _remove_if_older(path, cutoff)
        if stale:
            removed.append(path)
    return removed


def _remove_if_abandoned(path: Path) -> bool:
    """Remove a temporary file that no live writer holds locked (its process ended or was killed)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Removed while we hold the lock, so a writer that just created it sees it gone (see _StagedParquet).
        path.unlink()
    except (BlockingIOError, FileNotFoundError):
        return False
    finally:
        os.close(descriptor)
    return True


def _remove_if_older(path: Path, cutoff: float) -> bool:
    try:
        if path.stat().st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class BatchFileWriter:
    """Streams batches into temporary files and moves them into place on close."""

    def __init__(self, target: BatchFile):
        self._target = target
        self._mapped: _StagedParquet | None = None
        self._rejects: _StagedParquet | None = None
        self._schema: pa.Schema | None = None
        self.unchanged_rows = 0  # left out by the warehouse as unchanged: kept in the mapped file's footer
        target.mapped_path.parent.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> BatchFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close(commit=exc_type is None)
        except OSError as error:
            if is_disk_full(error):
                raise self._disk_full() from None
            raise
        if exc is not None and is_disk_full(exc):
            raise self._disk_full() from None

    def _disk_full(self) -> DiskFullError:
        # An earlier mapping's files of the partition go too: a delivery must not take them for this one's.
        self._target.remove()
        return DiskFullError(
            f"no space left on the disk of the batch files folder {self._target.directory}: this partition's "
            "files were removed and nothing was delivered; free space there (or set WSYNC_STATE_DIR to a "
            "folder on a larger disk) and run again"
        )

    def set_schema(self, schema: pa.Schema) -> None:
        """The mapped schema; needed when a partition has no rows at all."""
        self._schema = schema

    def write(
        self, mapped: pa.Table | pa.RecordBatch, rejects: pa.Table | pa.RecordBatch | None = None
    ) -> None:
        """Append mapped rows and their rejects."""
        if self._mapped is None:
            self._schema = mapped.schema
            self._mapped = _StagedParquet(self._target.mapped_path, mapped.schema)
        if mapped.num_rows:
            self._mapped.write(mapped)
        if rejects is not None and rejects.num_rows:
            if self._rejects is None:
                self._rejects = _StagedParquet(self._target.rejects_path, REJECT_SCHEMA)
            self._rejects.write(rejects)

    def close(self, commit: bool = True) -> None:
        """Finish the files; on commit move them into place, else drop them (both, if either cannot be finished)."""
        try:
            if self._mapped is None and self._schema is not None and commit:
                self._mapped = _StagedParquet(self._target.mapped_path, self._schema)
            if commit and self._mapped is not None and self.unchanged_rows:
                self._mapped.add_metadata({UNCHANGED_ROWS_KEY: str(self.unchanged_rows)})
            if commit:
                for staged in (self._mapped, self._rejects):
                    if staged is not None:
                        staged.finish()
        except BaseException:
            commit = False
            raise
        finally:
            for staged, path in (
                (self._mapped, self._target.mapped_path),
                (self._rejects, self._target.rejects_path),
            ):
                if staged is not None:
                    staged.close(commit)
                elif commit:
                    path.unlink(missing_ok=True)


class _StagedParquet:
    """A Parquet file written under a unique temporary name, locked while written, moved into place on commit.

    The lock is how `remove_stale_files` tells a running writer from one that was killed: the
    kernel releases it when the writer's process ends, however it ends.
    """

    def __init__(self, target: Path, schema: pa.Schema):
        self._target = target
        while True:
            descriptor, name = tempfile.mkstemp(
                dir=target.parent, prefix=f"{target.name}.", suffix=TEMPORARY_SUFFIX
            )
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(descriptor).st_nlink:
                    break
            except BlockingIOError:
                pass
            # A sweep took the new file for an abandoned one between its creation and our lock.
            os.close(descriptor)
        self._lock = descriptor
        self.path = Path(name)
        try:
            self._writer = pq.ParquetWriter(self.path, schema)
        except BaseException:
            self.path.unlink(missing_ok=True)
            os.close(descriptor)
            raise

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows, in row groups small enough to be read back one at a time."""
        self._writer.write(data, row_group_size=ROW_GROUP_ROWS)

    def add_metadata(self, metadata: dict[str, str]) -> None:
        """Key-value pairs for the file's footer."""
        self._writer.add_key_value_metadata(metadata)

    def finish(self) -> None:
        """Write the file's footer; it stays under its temporary name until `close`."""
        self._writer.close()

    def close(self, commit: bool) -> None:
        """Move the finished file into place on commit, else remove it. The lock is held until then."""
        try:
            if commit:
                self.path.replace(self._target)
            else:
                # After a failed write the writer may fail to close too: the file goes either way.
                with contextlib.suppress(Exception):
                    self._writer.close()
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._lock)
