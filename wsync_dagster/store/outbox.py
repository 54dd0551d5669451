"""The destinations' outbox in the profile store: which profiles (and which deliveries' events) each
destination of a sync has yet to receive, marked in the delivery's own transaction (store/schema.py).

A forward reads a slice of the pending rows and the profiles as they are now, one coalesced change per
profile; once the platform acknowledged (or rejected) all of it, it removes the rows it read, unless a
delivery marked them again meanwhile (`marks`), in one transaction with the platform's rejects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from wsync_dagster.destinations.event_columns import events_table
from wsync_dagster.destinations.profile_changes import Event, ProfileChange, Reject
from wsync_dagster.identities import priority
from wsync_dagster.store.backend import Backend

# The rejects a platform made of a forwarded item: `wsync rejects` shows them with the destination's name.
FORWARD_REJECT = "forward"
_MARKED_AGAIN = (
    "ON CONFLICT (sync, destination, profile_id, seq) DO UPDATE SET marks = forward_pending.marks + 1"
)
# The pending rows a forward read: what it removes once the platform acknowledged them.
_READ_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS forward_read"
    " (profile_id TEXT NOT NULL, seq BIGINT NOT NULL, marks BIGINT NOT NULL, PRIMARY KEY (profile_id, seq))"
)
# The keys of an event's stored `data` that Event carries in its own fields.
_EVENT_FIELDS = frozenset(
    {"event_name", "custom_event_type", "timestamp_unixtime_ms", "source_message_id", "custom_attributes"}
)

# Per pending profile and name this sync holds a register of: the value the profile shows (the newest of
# any sync), or NULL when no sync holds a value any more (a removal).
_FORWARDED_ATTRIBUTES = """
SELECT profile_id, name, value FROM (
    SELECT a.profile_id, a.name, a.value,
           ROW_NUMBER() OVER (PARTITION BY a.profile_id, a.name
                              ORDER BY CASE WHEN a.value IS NULL THEN 1 ELSE 0 END, a.version DESC, a.seq DESC)
               AS newest
    FROM attributes AS a
    WHERE a.profile_id IN (SELECT profile_id FROM forward_read)
      AND EXISTS (SELECT 1 FROM attributes AS own
                  WHERE own.profile_id = a.profile_id AND own.name = a.name AND own.sync = ?)
) AS ranked
WHERE newest = 1
"""

_PENDING_EVENTS = """
SELECT e.profile_id, e.event_id, e.event_type, e.event_name, e.timestamp_ms, e.data
FROM events AS e
JOIN (SELECT DISTINCT profile_id, seq FROM forward_read) AS r ON r.profile_id = e.profile_id AND r.seq = e.seq
WHERE e.sync = ? AND e.environment = ?
ORDER BY e.profile_id, e.timestamp_ms, e.event_id
"""


@dataclass
class PendingSlice:
    """Pending profiles of one destination, as coalesced changes, and the outbox rows they stand for."""

    changes: list[ProfileChange]
    rows: pa.Table  # profile_id, seq, marks: what to remove once acknowledged
    last_profile_id: str | None  # where the next slice starts
    event_table: pa.Table = field(default_factory=lambda: events_table([]))  # the changes' events as columns

    @property
    def events(self) -> int:
        """The events the slice carries."""
        return sum(len(change.events) for change in self.changes)


def mark_delivery(db: Backend, sync: str, environment: str, seq: int, destinations: Sequence[str]) -> None:
    """In the open delivery: every profile it created or updated is pending for each destination."""
    for destination in destinations:
        db.execute(
            "INSERT INTO forward_pending (sync, destination, environment, profile_id, seq)"
            f" SELECT DISTINCT ?, ?, ?, profile_id, ? FROM delivery_profile WHERE true {_MARKED_AGAIN}",
            (sync, destination, environment, seq),
        )


def mark_profiles(
    db: Backend, sync: str, environment: str, seq: int, destinations: Sequence[str], profile_ids: pa.Array
) -> None:
    """In the open delivery: these profiles (of events it wrote) are pending for each destination."""
    ids = profile_ids.unique()
    n = len(ids)
    for destination in destinations:
        db.insert(
            "forward_pending",
            pa.table(
                {
                    "sync": pa.array([sync] * n, pa.string()),
                    "destination": pa.array([destination] * n, pa.string()),
                    "environment": pa.array([environment] * n, pa.string()),
                    "profile_id": ids.cast(pa.string()),
                    "seq": pa.array([seq] * n, pa.int64()),
                    "marks": pa.array([1] * n, pa.int64()),
                }
            ),
            _MARKED_AGAIN,
        )


def seed(
    db: Backend, sync: str, destination: str, environment: str, partitions: Sequence[str] | None = None
) -> int:
    """Mark every profile holding this sync's data (of these partitions, if named) as pending, with all of
    its events of the sync; how many outbox rows were marked. Reads the store only, never the warehouse."""
    db.begin_write()
    try:
        params: dict[str, str] = {"sync": sync, "destination": destination, "environment": environment}
        where = events_where = ""
        if partitions is not None:
            # Placeholder names are letters only (the PostgreSQL backend's :name form): 12 → partition_bc.
            named = {
                "partition_" + "".join(chr(97 + int(d)) for d in str(n)): partition
                for n, partition in enumerate(partitions)
            }
            params.update(named)
            listed = ", ".join(f":{name}" for name in named) or "NULL"
            where = f" AND a.partition_key IN ({listed})"
            # Events keep the delivery that wrote them: the partition's last, which its deliveries row names.
            events_where = (
                " AND e.seq IN (SELECT d.seq FROM deliveries AS d WHERE d.sync = :sync"
                f" AND d.environment = :environment AND d.partition_key IN ({listed}))"
            )
        marked = db.execute(
            "INSERT INTO forward_pending (sync, destination, environment, profile_id, seq)"
            " SELECT DISTINCT :sync, :destination, :environment, a.profile_id, 0 FROM attributes AS a"
            " JOIN profiles AS p ON p.profile_id = a.profile_id AND p.environment = :environment"
            f" WHERE a.sync = :sync AND a.value IS NOT NULL{where} {_MARKED_AGAIN}",
            params,
        )
        marked += db.execute(
            "INSERT INTO forward_pending (sync, destination, environment, profile_id, seq)"
            " SELECT DISTINCT :sync, :destination, :environment, e.profile_id, e.seq FROM events AS e"
            f" WHERE e.sync = :sync AND e.environment = :environment{events_where} {_MARKED_AGAIN}",
            params,
        )
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return marked


def pending_profiles(db: Backend, sync: str, destination: str) -> int:
    """How many profiles the destination has yet to receive."""
    [(count,)] = db.rows(
        "SELECT COUNT(DISTINCT profile_id) FROM forward_pending WHERE sync = ? AND destination = ?",
        (sync, destination),
    )
    return count


def read_pending(
    db: Backend, sync: str, destination: str, environment: str, after: str | None, limit: int
) -> PendingSlice:
    """The next `limit` pending profiles after `after` (by id), each as one change with its newest values."""
    with db.read():
        ids = db.rows(
            "SELECT DISTINCT profile_id FROM forward_pending WHERE sync = ? AND destination = ? AND profile_id > ?"
            " ORDER BY profile_id LIMIT ?",
            (sync, destination, after or "", limit),
        )
        if not ids:
            return PendingSlice([], pa.table({"profile_id": [], "seq": [], "marks": []}), None)
        first, last = ids[0][0], ids[-1][0]
        rows = db.rows(
            "SELECT profile_id, seq, marks FROM forward_pending WHERE sync = ? AND destination = ?"
            " AND profile_id >= ? AND profile_id <= ? ORDER BY profile_id, seq",
            (sync, destination, first, last),
        )
        read = pa.table(
            {
                "profile_id": pa.array([r[0] for r in rows], pa.string()),
                "seq": pa.array([r[1] for r in rows], pa.int64()),
                "marks": pa.array([r[2] for r in rows], pa.int64()),
            }
        )
        db.execute(_READ_TABLE)
        db.stage("forward_read", read)
        identities: dict[str, dict[str, str]] = {}
        for profile_id, identity_type, value in db.rows(
            "SELECT profile_id, identity_type, value FROM identities"
            " WHERE profile_id IN (SELECT profile_id FROM forward_read)"
        ):
            identities.setdefault(profile_id, {})[identity_type] = value
        attributes: dict[str, dict[str, Any]] = {}
        removed: dict[str, list[str]] = {}
        for profile_id, name, value in db.rows(_FORWARDED_ATTRIBUTES, (sync,)):
            if value is None:
                removed.setdefault(profile_id, []).append(name)
            else:
                attributes.setdefault(profile_id, {})[name] = json.loads(value)
        events: dict[str, list[Event]] = {}
        for profile_id, event_id, event_type, name, timestamp_ms, data in db.rows(
            _PENDING_EVENTS, (sync, environment)
        ):
            events.setdefault(profile_id, []).append(_event(event_id, event_type, name, timestamp_ms, data))
    changes = [
        ProfileChange(
            profile_id=profile_id,
            identities=dict(sorted(identities[profile_id].items(), key=lambda item: priority(item[0]))),
            attributes=attributes.get(profile_id, {}),
            removed=tuple(sorted(removed.get(profile_id, ()))),
            events=tuple(events.get(profile_id, ())),
        )
        for (profile_id,) in ids
        if profile_id in identities  # an erased profile has nothing left to send
    ]
    return PendingSlice(changes, read, last, events_table(changes))


def acknowledge(
    db: Backend,
    sync: str,
    destination: str,
    environment: str,
    read: pa.Table,
    rejects: Sequence[Reject],
    sent: Sequence[ProfileChange] = (),
) -> int:
    """The platform took (or rejected) everything of a slice: its outbox rows go, unless marked again since,
    its rejects are stored with the platform's reasons, and the profiles sent are listed as received there
    (or, erased since the slice was read, queued for the platform's deletion), in one transaction; the rows
    removed."""
    db.begin_write()
    try:
        _received(db, sync, destination, environment, sent)
        db.execute(_READ_TABLE)
        db.stage("forward_read", read)
        removed = db.execute(
            "DELETE FROM forward_pending WHERE sync = ? AND destination = ? AND EXISTS ("
            " SELECT 1 FROM forward_read AS r WHERE r.profile_id = forward_pending.profile_id"
            " AND r.seq = forward_pending.seq AND r.marks = forward_pending.marks)",
            (sync, destination),
        )
        # A profile sent again replaces its earlier rejects at this destination.
        items = pa.array(sorted({_reject_row(p) for p in read.column("profile_id").to_pylist()}), pa.string())
        db.stage("stage_profile", pa.table({"profile_id": items}))
        db.execute(
            "DELETE FROM rejects WHERE sync = ? AND environment = ? AND partition_key = ? AND kind = ?"
            ' AND "row" IN (SELECT profile_id FROM stage_profile)',
            (sync, environment, destination, FORWARD_REJECT),
        )
        _insert_rejects(db, sync, environment, destination, rejects)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return removed


def _received(
    db: Backend, sync: str, destination: str, environment: str, sent: Sequence[ProfileChange]
) -> None:
    """List the profiles the destination now holds; one erased while it was sent gets its deletion queued."""
    if not sent:
        return
    ids = pa.array([change.profile_id for change in sent], pa.string())
    db.stage("stage_profile", pa.table({"profile_id": ids}))
    gone = {
        profile_id
        for (profile_id,) in db.rows(
            "SELECT s.profile_id FROM stage_profile AS s"
            " WHERE NOT EXISTS (SELECT 1 FROM profiles AS p WHERE p.profile_id = s.profile_id)"
        )
    }
    n = len(sent)
    db.insert(
        "forwarded",
        pa.table(
            {
                "sync": pa.array([sync] * n, pa.string()),
                "destination": pa.array([destination] * n, pa.string()),
                "profile_id": ids,
            }
        ).filter(pa.array([change.profile_id not in gone for change in sent])),
        "ON CONFLICT (sync, destination, profile_id) DO NOTHING",
    )
    queue_deletions(
        db,
        environment,
        [(sync, destination, c.profile_id, dict(c.identities)) for c in sent if c.profile_id in gone],
    )


def queue_deletions(
    db: Backend, environment: str, people: Sequence[tuple[str, str, str, dict[str, str]]]
) -> int:
    """Queue the platform's deletion of each (sync, destination, profile id, identities): what an erasure
    leaves for the destinations that held the person; the identities are kept until it is sent."""
    if not people:
        return 0
    n = len(people)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return db.insert(
        "erasure_pending",
        pa.table(
            {
                "sync": pa.array([p[0] for p in people], pa.string()),
                "destination": pa.array([p[1] for p in people], pa.string()),
                "environment": pa.array([environment] * n, pa.string()),
                "profile_id": pa.array([p[2] for p in people], pa.string()),
                "identities": pa.array([json.dumps(p[3], sort_keys=True) for p in people], pa.string()),
                "requested_at": pa.array([now] * n, pa.string()),
            }
        ),
        "ON CONFLICT (sync, destination, profile_id) DO NOTHING",
    )


def pending_erasures(db: Backend, sync: str, destination: str) -> int:
    """How many deletion requests the destination has yet to receive."""
    [(count,)] = db.rows(
        "SELECT COUNT(*) FROM erasure_pending WHERE sync = ? AND destination = ?", (sync, destination)
    )
    return count


@dataclass(frozen=True)
class PendingErasure:
    """A deletion a destination has yet to receive: who, by which identities, since when (ISO UTC)."""

    profile_id: str
    identities: dict[str, str]
    requested_at: str


def read_erasures(db: Backend, sync: str, destination: str, limit: int) -> list[PendingErasure]:
    """The oldest `limit` deletion requests the destination has yet to receive."""
    rows = db.rows(
        "SELECT profile_id, identities, requested_at FROM erasure_pending WHERE sync = ? AND destination = ?"
        " ORDER BY requested_at, profile_id LIMIT ?",
        (sync, destination, limit),
    )
    return [PendingErasure(p, json.loads(identities), at) for p, identities, at in rows]


def erasures_done(
    db: Backend,
    sync: str,
    destination: str,
    environment: str,
    profile_ids: Sequence[str],
    rejects: Sequence[Reject],
) -> int:
    """The platform took these deletions (or refused them, with its reasons kept as rejects): the queued
    requests go, and with them the identities they held, in one transaction; the requests removed. Like an
    erasure, the delete overwrites and the store is reclaimed, so the identities leave the file too."""
    if not profile_ids and not rejects:
        return 0
    db.begin_erasure()
    try:
        done = pa.array(sorted({*profile_ids, *(r.item for r in rejects)}), pa.string())
        db.stage("stage_profile", pa.table({"profile_id": done}))
        removed = db.execute(
            "DELETE FROM erasure_pending WHERE sync = ? AND destination = ?"
            " AND profile_id IN (SELECT profile_id FROM stage_profile)",
            (sync, destination),
        )
        _insert_rejects(db, sync, environment, destination, rejects)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    if removed:
        db.reclaim(("erasure_pending",))
    return removed


def _insert_rejects(
    db: Backend, sync: str, environment: str, destination: str, rejects: Sequence[Reject]
) -> None:
    """A destination's rejects, kept with the platform's reasons (`wsync rejects`)."""
    if not rejects:
        return
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    n = len(rejects)
    db.insert(
        "rejects",
        pa.table(
            {
                "sync": pa.array([sync] * n, pa.string()),
                "environment": pa.array([environment] * n, pa.string()),
                "partition_key": pa.array([destination] * n, pa.string()),
                "row_number": pa.nulls(n, pa.int64()),
                "reason": pa.array([r.reason for r in rejects], pa.string()),
                "row": pa.array([_reject_row(r.item) for r in rejects], pa.string()),
                "created_at": pa.array([now] * n, pa.string()),
                "kind": pa.array([FORWARD_REJECT] * n, pa.string()),
            }
        ),
    )


def _reject_row(item: str) -> str:
    """What `wsync rejects` shows of a rejected item: the profile or event id the platform refused."""
    return json.dumps({"item": item})


def _event(event_id: str, event_type: str, name: str, timestamp_ms: int, data: str | None) -> Event:
    stored = json.loads(data) if data else {}
    stored = stored if isinstance(stored, dict) else {}
    custom = stored.get("custom_attributes")
    return Event(
        event_id=event_id,
        event_type=event_type,
        name=name,
        timestamp_ms=int(timestamp_ms),
        attributes=custom if isinstance(custom, dict) else {},
        custom_event_type=str(stored.get("custom_event_type") or "other"),
        data={key: value for key, value in stored.items() if key not in _EVENT_FIELDS},
    )
