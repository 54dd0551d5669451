"""Sync modes: each owns its partitions, the scope and read of a run, its trigger and `wsync run`'s runs."""

from __future__ import annotations

from wsync_dagster.modes.base import PlannedRun, RunError, RunScope, SyncMode
from wsync_dagster.modes.cdc import ChangeCapture
from wsync_dagster.modes.full import FullMode
from wsync_dagster.modes.incremental import TimeWindows
from wsync_dagster.modes.ranges import IntegerRanges
from wsync_dagster.spec import SyncSpec

__all__ = ["PlannedRun", "RunError", "RunScope", "SyncMode", "sync_mode"]


def sync_mode(spec: SyncSpec) -> SyncMode:
    """The mode strategy of a sync."""
    settings = spec.sync
    if settings.mode == "full":
        return FullMode(spec)
    if settings.mode == "incremental" and settings.iterator_type == "integer":
        return IntegerRanges(spec)
    if settings.mode == "incremental":
        return TimeWindows(spec)
    if settings.mode == "cdc":
        return ChangeCapture(spec)
    raise ValueError(f"{spec.name}: sync.mode {settings.mode} has no strategy")
