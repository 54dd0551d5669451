"""What a sync mode owns: its partitions, the scope and read of a run, its trigger, and the runs `wsync run` makes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    DagsterInstance,
    PartitionsDefinition,
    ScheduleDefinition,
    SensorDefinition,
)

from wsync_dagster.iterators import Window
from wsync_dagster.run_partitions import Partition
from wsync_dagster.store import ProfileStore

# How often a `once` sensor looks again after its run (it only skips then).
ONCE_INTERVAL_S = 30

# What define_asset_job returns; Dagster does not export its class.
SyncJob = Any


class RunError(RuntimeError):
    """A run that cannot start or did not finish; the message names the sync and what to do."""


@dataclass(frozen=True)
class RunScope:
    """What one run of a sync covers: a label for files, its partitions, what it reads, and its run version."""

    label: str
    partitions: list[Partition]
    window: Window | None  # None: the whole model
    run_version: int = 0


@dataclass(frozen=True)
class PlannedRun:
    """One Dagster run `wsync run` makes: its label and the options of `execute_in_process`."""

    label: str
    options: dict = field(default_factory=dict)
    partitions: int = 1  # how many it covers: `wsync run` says how far it is through several runs


class SyncMode(Protocol):
    """One way of syncing; a new mode is one module implementing this and a line in the registry."""

    def partitions(self) -> PartitionsDefinition:
        """The partitions of the sync's assets."""
        ...

    def backfill_policy(self) -> BackfillPolicy | None:
        """How a backfill of many partitions runs (one run for a range, or one per partition)."""
        ...

    def scope(self, context: AssetExecutionContext) -> RunScope:
        """What the running asset covers."""
        ...

    def trigger(self, job: SyncJob) -> ScheduleDefinition | SensorDefinition | None:
        """The schedule or sensor that starts runs; None for on_demand."""
        ...

    def planned_runs(
        self, store: ProfileStore, instance: DagsterInstance, partition: str | None, now: datetime
    ) -> list[PlannedRun]:
        """The runs `wsync run` makes: one `--partition` (key or range), or everything due."""
        ...

    def prune_partitions(self, instance: DagsterInstance, store: ProfileStore) -> list[str]:
        """After a delivery: the partitions Dagster no longer needs to list, deleted; their keys."""
        ...
