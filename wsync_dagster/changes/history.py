"""A Delta table's commit history, as delta-rs and Databricks' DESCRIBE HISTORY both give it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wsync_dagster.changes.feed import ChangeFeedError, VersionWindow

# History entries after which the feed no longer says what changed row by row.
_BREAKS = {"CREATE OR REPLACE TABLE", "REPLACE TABLE", "RESTORE", "TRUNCATE"}
DELTA_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


@dataclass(frozen=True)
class Commit:
    """One entry of the table's history."""

    version: int
    micros: int  # when it was committed, epoch µs
    operation: str  # upper case: WRITE, MERGE, DELETE, CREATE OR REPLACE TABLE, …
    mode: str = ""  # a WRITE's mode: append or overwrite


def no_feed(where: str, table: str = "…") -> ChangeFeedError:
    """The table has no change data feed: how to turn it on."""
    return ChangeFeedError(
        f"{where}: has no change data feed; turn it on with ALTER TABLE {table} SET TBLPROPERTIES "
        "(delta.enableChangeDataFeed = true) (changes from then on are recorded), or use mode incremental"
    )


def check_commits(commits: Sequence[Commit], window: VersionWindow, where: str) -> None:
    """Refuse a range whose feed cannot say which rows changed: re-created, overwritten or expired."""
    latest = max((commit.version for commit in commits), default=-1)
    if latest < window.last:
        raise ChangeFeedError(
            f"{where}: is at version {latest}, below version {window.last} that this sync has read: the "
            "table was re-created; start the sync again (a new name) or use mode incremental"
        )
    oldest = min(commit.version for commit in commits)
    if window.first < oldest:
        raise ChangeFeedError(
            f"{where}: its history before version {oldest} has expired, and this run reads from version "
            f"{window.first}; lengthen delta.logRetentionDuration and delta.deletedFileRetentionDuration, "
            "or use mode incremental"
        )
    for commit in sorted(commits, key=lambda commit: commit.version):
        if not window.first <= commit.version <= window.last:
            continue
        if commit.operation in _BREAKS or (commit.operation == "WRITE" and commit.mode == "overwrite"):
            raise ChangeFeedError(
                f"{where}: was overwritten at version {commit.version} ({commit.operation.lower()}"
                f"{' ' + commit.mode if commit.mode else ''}), so its change feed cannot say which rows "
                "changed; model it as an incremental sync (an updated_at iterator) or as a full sync"
            )


def commit_micros(commits: Sequence[Commit], version: int, where: str) -> int:
    """When a version was committed, in epoch µs."""
    for commit in commits:
        if commit.version == version:
            return commit.micros
    raise ChangeFeedError(f"{where}: has no version {version} in its history (it may have expired)")
