"""Dagster's per-partition bookkeeping in time linear in the partitions: a run over years of them.

The only module of wsync that uses Dagster internals (pinned: dagster==1.13.27, dagster-postgres); test_bookkeeping.py
checks Dagster's own asset queries answer exactly as with the stock parts, so an upgrade that breaks
it fails the suite, and each storage refuses to load on any other Dagster (`BUILT_FOR`), saying how
to switch dagster.yaml to the stock storage. A run over N partitions writes a planned event per
partition per asset and a materialization per partition, each with its own metadata:

- The stock SQLite event log opens new connections to the run shard and the index shard for each
  event (synchronous=FULL), 20-45 ms an event. Dagster hands such events over in batches when
  DAGSTER_EVENT_BATCH_SIZE is set, but that storage stores a batch one event at a time.
  `BatchedSqliteEventLogStorage` (dagster.yaml) writes what `store_event` would, row for row and
  in the same order, with one transaction per shard per batch.
- The stock PostgreSQL event log (dagster-postgres) stores a batch of materializations in one
  statement but every planned event on its own round trip (an insert and a NOTIFY each).
  `BatchedPostgresEventLogStorage` (deploy/dagster-postgres.yaml) stores every asset event of a
  batch as `store_event` would, in one insert and one index transaction.
- `context.add_asset_metadata(partition_key=...)` copies and re-checks all metadata added so far
  and lists the run's partition keys at each call: quadratic in the partitions.
  `add_partition_metadata` adds every partition's metadata at once.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from itertools import groupby
from typing import Any

import dagster
from dagster import AssetExecutionContext, DagsterInstance, Field, IntMetadataValue, IntSource, StringSource
from dagster._core.events import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
    DagsterEventType,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.config import pg_config
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils.concurrency import ConcurrencyClaimStatus
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.event_log.event_log import CHANNEL_NAME
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from dagster_shared.serdes import serialize_value
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

# The Dagster release whose event log internals this module copies (dagster-postgres's release is tied to it).
BUILT_FOR = "1.13.27"
# How to switch to Dagster's own storage, per backend: without the entry Dagster opens the same SQLite files.
TO_STOCK_SQLITE = (
    "delete event_log_storage from dagster.yaml to use Dagster's stock "
    "dagster._core.storage.event_log.SqliteEventLogStorage (the same files)"
)
TO_STOCK_POSTGRES = (
    "set event_log_storage in dagster.yaml to Dagster's stock storage "
    "(module: dagster_postgres.event_log, class: PostgresEventLogStorage, the same config)"
)
# Dagster's switch for handing events over in batches (read at each event, so setting it here is enough).
BATCH_SIZE_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"
# A run over a year of hourly partitions plans 8,760 events per asset: one batch holds them all.
DEFAULT_BATCH_SIZE = 20_000


class UnsupportedDagsterError(RuntimeError):
    """The installed Dagster is not the release the batched event log storages were built for."""


def require_built_for_dagster(storage: type, switch: str) -> None:
    """Refuse to load `storage` on a Dagster other than BUILT_FOR; `switch` says how to use the stock one instead."""
    installed = dagster.__version__
    if installed != BUILT_FOR:
        raise UnsupportedDagsterError(
            f"{storage.__module__}.{storage.__name__} is built for Dagster {BUILT_FOR}, not the installed "
            f"{installed}: {switch}, or install dagster=={BUILT_FOR}"
        )


def _index_kind(entry: EventLogEntry) -> str | None:
    """'asset' or 'check' for events the index shard mirrors; None for run-shard-only events."""
    event_type = entry.dagster_event_type
    if event_type in ASSET_EVENTS:
        return "asset"
    if event_type in ASSET_CHECK_EVENTS:
        return "check"
    return None


def _runs_of_kind(events: Sequence[EventLogEntry]) -> Iterator[tuple[str | None, slice]]:
    """The batch in its order as runs of consecutive events of one index kind: each run's kind and slice."""
    start = 0
    for kind, run in groupby(events, key=_index_kind):
        end = start + sum(1 for _ in run)
        yield kind, slice(start, end)
        start = end


def _batchable(entry: EventLogEntry) -> bool:
    """Asset and asset check events (what Dagster batches); run status events take the stock path."""
    event = entry.dagster_event
    if event is None or entry.dagster_event_type in EVENT_TYPE_TO_PIPELINE_RUN_STATUS:
        return False
    kind = _index_kind(entry)
    return kind == "check" or (kind == "asset" and event.asset_key is not None)


class EventTexts:
    """Serializes a batch's asset events as `serialize_value` does, once per shape instead of once per event.

    The planned events and materializations of one run differ only in their partition, time and
    integer metadata (the counts): each shape is serialized once with placeholders, and each event
    fills in its own values.
    """

    PARTITION = "wsync-partition-placeholder-1f9c"
    TIMESTAMP = 1.2345678901234567e-300
    FIRST_INT = 7_351_209_000_000_000_001  # metadata ints count up from here (no count gets there)
    MAX_SHAPES = 8  # a batch with more shapes than this is not a run's partitions: stop learning them

    def __init__(self) -> None:
        self._known: list[tuple[tuple[EventLogEntry, tuple[str, ...]], list[str], list[int]]] = []

    def serialize(self, entry: EventLogEntry) -> str:
        """`serialize_value(entry)`, from the text of its shape when one is known."""
        shaped = self._shape(entry)
        if shaped is None:
            return serialize_value(entry)
        shape, values = shaped
        for known, parts, order in self._known:
            if known == shape:
                return parts[0] + "".join(values[i] + part for i, part in zip(order, parts[1:], strict=True))
        if len(self._known) < self.MAX_SHAPES and (
            found := self._parts(serialize_value(shape[0]), len(values))
        ):
            self._known.append((shape, *found))
            return self.serialize(entry)
        return serialize_value(entry)

    def _shape(self, entry: EventLogEntry) -> tuple[tuple[EventLogEntry, tuple[str, ...]], list[str]] | None:
        """The entry with placeholders for its partition, time and int metadata, and those values as JSON text."""
        event = entry.get_dagster_event()
        data = event.event_specific_data
        values = [json.dumps(event.partition), repr(entry.timestamp)]
        if event.event_type_value == DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value:
            if data.partition is None or data.partitions_subset is not None:
                return None
            data = data._replace(partition=self.PARTITION)
        elif event.event_type_value == DagsterEventType.ASSET_MATERIALIZATION.value:
            materialization = data.materialization
            if materialization.partition is None:
                return None
            metadata = dict(materialization.metadata)
            for label, value in metadata.items():
                if type(value) is IntMetadataValue and type(value.value) is int:
                    metadata[label] = IntMetadataValue(self.FIRST_INT + len(values))
                    values.append(repr(value.value))
            # NamedTuple._replace copies without re-running the classes' checks.
            data = data._replace(
                materialization=materialization._replace(partition=self.PARTITION, metadata=metadata)
            )
        else:
            return None
        shape = entry._replace(
            timestamp=self.TIMESTAMP, dagster_event=event._replace(event_specific_data=data)
        )
        # Metadata is written as a list in the dict's order, which dict equality ignores: the shape includes it.
        labels = tuple(data.materialization.metadata) if hasattr(data, "materialization") else ()
        return (shape, labels), values

    def _parts(self, text: str, count: int) -> tuple[list[str], list[int]] | None:
        """The text between the placeholders, and which value goes where; None unless each is found exactly once."""
        placeholders = [json.dumps(self.PARTITION), repr(self.TIMESTAMP)]
        placeholders += [repr(self.FIRST_INT + i) for i in range(2, count)]
        if any(text.count(placeholder) != 1 for placeholder in placeholders):
            return None
        order = sorted(range(count), key=lambda i: text.index(placeholders[i]))
        parts, position = [], 0
        for i in order:
            found = text.index(placeholders[i], position)
            parts.append(text[position:found])
            position = found + len(placeholders[i])
        parts.append(text[position:])
        return parts, order


class _BatchedAssetEvents:
    """What both batched storages write for a batch: event rows, planned check rows, each asset's latest entry."""

    # The dialect's INSERT with ON CONFLICT, and whether an event that sets no column still creates
    # the asset's row (the stock PostgreSQL storage does, the SQLite one does not).
    _upsert: Any = staticmethod(sqlite_insert)
    _creates_asset_rows = False

    def _row(self, entry: EventLogEntry, serialized: str) -> dict[str, Any]:
        """`_event_to_row(entry)` with the event already serialized."""
        event = entry.get_dagster_event()
        asset_key = event.asset_key
        return {
            "run_id": entry.run_id,
            "event": serialized,
            "dagster_event_type": event.event_type_value,
            "timestamp": self._event_insert_timestamp(entry),
            "step_key": event.step_key,
            "asset_key": asset_key.to_string() if asset_key else None,
            "partition": event.partition,
        }

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """The planned rows of an asset check, one per partition, with the event serialized once (not per row)."""
        planned = event.get_dagster_event().event_specific_data
        keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        shared = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": serialize_value(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [{**shared, "partition": key} for key in keys])

    def _store_tags_and_latest_entries(
        self, conn: Connection, events: Sequence[EventLogEntry], event_ids: Sequence[int]
    ) -> None:
        """The events' tags, and each asset's row as the events leave it when stored one by one."""
        self._store_asset_event_tags(conn, events, event_ids)
        has_index_cols = self._has_asset_key_index_cols_on_connection(conn)
        by_asset: dict[str, list[tuple[EventLogEntry, int]]] = {}
        for entry, event_id in zip(events, event_ids, strict=True):
            by_asset.setdefault(entry.get_dagster_event().asset_key.to_string(), []).append((entry, event_id))
        for asset_key, asset_events in by_asset.items():
            self._store_latest_asset_entry(conn, asset_key, asset_events, has_index_cols)

    def _store_latest_asset_entry(
        self,
        conn: Connection,
        asset_key: str,
        asset_events: list[tuple[EventLogEntry, int]],
        has_index_cols: bool,
    ) -> None:
        """The asset row the events leave when stored one by one: each column from the last event setting it."""
        values: dict[str, Any] = {}
        for entry, event_id in reversed(asset_events):
            for column, value in self._get_asset_entry_values(entry, event_id, has_index_cols).items():
                values.setdefault(column, value)
            # A materialization sets every column: events before it change nothing.
            if entry.get_dagster_event().is_step_materialization:
                break
        insert = self._upsert(AssetKeyTable).values(asset_key=asset_key, **values)
        if values:
            conn.execute(
                insert.on_conflict_do_update(index_elements=[AssetKeyTable.c.asset_key], set_=values)
            )
        elif self._creates_asset_rows:
            conn.execute(insert.on_conflict_do_nothing())


class BatchedSqliteEventLogStorage(_BatchedAssetEvents, SqliteEventLogStorage):
    """SqliteEventLogStorage whose `store_event_batch` takes one transaction per shard."""

    def __init__(
        self,
        base_dir: str | None = None,
        inst_data: ConfigurableClassData | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        require_built_for_dagster(type(self), TO_STOCK_SQLITE)
        self._inst_data = inst_data
        if base_dir is not None:
            super().__init__(base_dir, inst_data=inst_data)
        # Every process that opens the instance (wsync run, dagster dev's run workers) batches;
        # a value set outside wins.
        os.environ.setdefault(BATCH_SIZE_VARIABLE, str(batch_size))

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "base_dir": Field(StringSource, is_required=False),
            "batch_size": Field(IntSource, is_required=False, default_value=DEFAULT_BATCH_SIZE),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> BatchedSqliteEventLogStorage:
        return cls(
            config_value.get("base_dir"),
            inst_data=inst_data,
            batch_size=config_value.get("batch_size", DEFAULT_BATCH_SIZE),
        )

    def register_instance(self, instance: DagsterInstance) -> None:
        """Without a base_dir, open the event logs where Dagster's default keeps them in this instance's home."""
        if not hasattr(self, "_base_dir"):
            # The same files as the stock storage: switching storages keeps the history.
            super().__init__(
                os.path.join(instance.root_directory, "history", "runs"), inst_data=self._inst_data
            )
        super().register_instance(instance)

    def claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None
    ) -> ConcurrencyClaimStatus:
        """Dagster's claim of a pool slot, one process at a time."""
        # SQLite ignores the claim's SELECT … FOR UPDATE: two runs claiming the last free slot in the same
        # instant both took it (seen in test_pools under load), and two deliveries wrote the one store.
        with open(os.path.join(self._base_dir, "pool-claims.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store the events as `store_event` would one by one, in one transaction per shard."""
        if len(events) < 2 or not all(_batchable(entry) for entry in events):
            super().store_event_batch(events)
            return
        texts = EventTexts()
        rows = [self._row(entry, texts.serialize(entry)) for entry in events]
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        # The index shard, in the batch's order: asset events together, check events as Dagster stores them.
        for kind, run in _runs_of_kind(events):
            if kind == "asset":
                self._mirror_asset_events(events[run], rows[run])
            else:
                for entry, row in zip(events[run], rows[run], strict=True):
                    with self.index_connection() as conn:
                        event_id = conn.execute(
                            SqlEventLogStorageTable.insert().values(**row)
                        ).inserted_primary_key[0]
                    self.store_asset_check_event(entry, event_id)

    def _mirror_asset_events(self, events: Sequence[EventLogEntry], rows: list[dict[str, Any]]) -> None:
        """Copy asset events into the index shard, with their tags and each asset's latest entry."""
        with self.index_transaction() as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
            # This transaction holds SQLite's write lock since the insert: its rows took consecutive ids.
            last_id = conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
            event_ids = list(range(last_id - len(rows) + 1, last_id + 1))
            self._store_tags_and_latest_entries(conn, events, event_ids)


class BatchedPostgresEventLogStorage(_BatchedAssetEvents, PostgresEventLogStorage):
    """PostgresEventLogStorage whose `store_event_batch` stores a batch's asset events in one insert."""

    _upsert = staticmethod(postgresql_insert)
    _creates_asset_rows = True

    def __init__(self, *args: Any, batch_size: int = DEFAULT_BATCH_SIZE, **kwargs: Any):
        require_built_for_dagster(type(self), TO_STOCK_POSTGRES)
        super().__init__(*args, **kwargs)
        # As for SQLite: every process that opens the instance batches; a value set outside wins.
        os.environ.setdefault(BATCH_SIZE_VARIABLE, str(batch_size))

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            **pg_config(),
            "batch_size": Field(IntSource, is_required=False, default_value=DEFAULT_BATCH_SIZE),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> BatchedPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            batch_size=config_value.get("batch_size", DEFAULT_BATCH_SIZE),
        )

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store the events as `store_event` would one by one: asset events in one insert, checks one by one."""
        if len(events) < 2 or not all(_batchable(entry) for entry in events):
            super().store_event_batch(events)
            return
        for kind, run in _runs_of_kind(events):
            if kind == "asset":
                self._store_asset_events(events[run])
            else:
                for entry in events[run]:
                    self.store_event(entry)

    def _store_asset_events(self, events: Sequence[EventLogEntry]) -> None:
        """The events' rows with their ids in order, then their tags and each asset's latest entry."""
        texts = EventTexts()
        rows = [self._row(entry, texts.serialize(entry)) for entry in events]
        with self._connect() as conn:
            # sort_by_parameter_order: SQLAlchemy returns the ids in the rows' order, however it splits them.
            returned = conn.execute(
                SqlEventLogStorageTable.insert().returning(
                    SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
                ),
                rows,
            )
            event_ids = [int(row[0]) for row in returned]
            # The stock storage notifies per event for watchers of older versions; they re-read from
            # their cursor, so the batch's last event is enough.
            conn.execute(
                text(f"NOTIFY {CHANNEL_NAME}, :notify_id"),
                {"notify_id": f"{events[-1].run_id}_{event_ids[-1]}"},
            )
        with self.index_transaction() as conn:
            self._store_tags_and_latest_entries(conn, events, event_ids)


def add_partition_metadata(
    context: AssetExecutionContext, by_partition: Mapping[str, Mapping[str, Any]]
) -> None:
    """`context.add_asset_metadata(metadata, partition_key=key)` for every partition of the run at once."""
    targeted = set(context.partition_keys)
    if unknown := sorted(set(by_partition) - targeted):
        raise ValueError(f"metadata for partitions this run does not target: {', '.join(unknown[:3])}")
    step = context.get_step_execution_context()
    asset_key = context.assets_def.key
    per_output = dict(step._metadata_accumulator.per_output_metadata)
    for key, metadata in by_partition.items():
        handle = AssetMetadataHandle(asset_key=asset_key, partition_key=key)
        per_output[handle] = {**per_output.get(handle, {}), **metadata}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=per_output)
