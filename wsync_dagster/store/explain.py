"""Why a profile says what it says: each value's register, what it outranked, what removed the rest, and
the profile's last changes (`wsync profile --explain`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from wsync_dagster.identities import priority
from wsync_dagster.store.backend import Backend
from wsync_dagster.store.schema import HISTORY_PER_PROFILE

# Versions in this range are µs since the epoch (2000 to 2100): the source time a row describes. Outside
# it a version is a sync's own integer order (an integer iterator), shown as the number.
_EPOCH_US_FROM, _EPOCH_US_UNTIL = 946_684_800_000_000, 4_102_444_800_000_000

# Every register of the profile, the shown order first: per name, newest version, ties to the later delivery.
_REGISTERS = """
SELECT name, sync, value, version, seq, partition_key, run_id, updated_at FROM attributes
WHERE profile_id = ? ORDER BY name, value IS NULL, version DESC, seq DESC, sync
"""

_HISTORY = """
SELECT name, sync, value, replaced, version, partition_key, run_id, changed_at FROM attribute_history
WHERE profile_id = ? ORDER BY seq DESC, name, sync LIMIT ?
"""


def explain(db: Backend, profile_id: str) -> dict[str, Any]:
    """Per identity and attribute, where its value came from; and the profile's newest changes."""
    identities = db.rows(
        "SELECT identity_type, value, version, created_at FROM identities WHERE profile_id = ?", (profile_id,)
    )
    history = [
        {
            "name": name,
            "sync": sync,
            "change": "removed" if value is None else ("replaced" if replaced is not None else "set"),
            "value": _decode(value),
            "replaced": _decode(replaced),
            **_origin(version, partition, run_id, changed_at),
        }
        for name, sync, value, replaced, version, partition, run_id, changed_at in db.rows(
            _HISTORY, (profile_id, HISTORY_PER_PROFILE)
        )
    ]
    attributes: dict[str, dict[str, Any]] = {}
    for name, sync, value, version, _, partition, run_id, updated_at in db.rows(_REGISTERS, (profile_id,)):
        entry = attributes.setdefault(name, {"value": None, "set_by": None, "outranked": [], "removed": []})
        register = {"sync": sync, **_origin(version, partition, run_id, updated_at)}
        if value is None:
            # What the tombstone removed, while the history still holds that change.
            removal = next(
                (h for h in history if h["name"] == name and h["sync"] == sync and h["change"] == "removed"),
                None,
            )
            entry["removed"].append({**register, "removed_value": removal["replaced"] if removal else None})
        elif entry["set_by"] is None:
            entry["value"], entry["set_by"] = _decode(value), register
        else:
            entry["outranked"].append({**register, "value": _decode(value)})
    return {
        "identities": {
            identity_type: {"value": value, **_version(version), "since": created_at}
            for identity_type, value, version, created_at in sorted(identities, key=lambda i: priority(i[0]))
        },
        "attributes": attributes,
        "history": history,
        "history_limit": HISTORY_PER_PROFILE,
    }


def _origin(version: int, partition: str | None, run_id: str | None, delivered_at: str) -> dict[str, Any]:
    return {**_version(version), "partition": partition, "run_id": run_id, "delivered_at": delivered_at}


def _version(version: int) -> dict[str, Any]:
    """The version as stored, and the source time it stands for when it is one."""
    time = None
    if _EPOCH_US_FROM <= version < _EPOCH_US_UNTIL:
        time = datetime.fromtimestamp(version / 1_000_000, UTC).isoformat()
    return {"version": version, "version_time": time}


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def describe(profile: dict[str, Any]) -> list[str]:
    """A profile and its explanation (`profile(..., explain=True)`) as the lines `wsync profile --explain` prints."""
    explanation = profile["explain"]
    lines = [f"profile {profile['profile_id']} ({profile['environment']})"]
    for identity_type, identity in explanation["identities"].items():
        lines.append(
            f"  identity  {identity_type} = {identity['value']} (version {_when(identity)}, since {identity['since']})"
        )
    for name, attribute in explanation["attributes"].items():
        shown = "(no value)" if attribute["set_by"] is None else json.dumps(attribute["value"])
        lines.append(f"  attribute {name} = {shown}")
        if attribute["set_by"] is not None:
            lines.append(f"      set by {attribute['set_by']['sync']}: {_where(attribute['set_by'])}")
        for other in attribute["outranked"]:
            lines.append(f"      outranked {other['sync']} = {json.dumps(other['value'])}: {_where(other)}")
        for removal in attribute["removed"]:
            was = "" if removal["removed_value"] is None else f" (was {json.dumps(removal['removed_value'])})"
            lines.append(f"      removed by {removal['sync']}{was}: {_where(removal)}")
    history = explanation["history"]
    lines.append(f"  last changes, newest first (at most {explanation['history_limit']} kept):")
    for change in history:
        before = "" if change["replaced"] is None else f"{json.dumps(change['replaced'])} -> "
        after = "(removed)" if change["value"] is None else json.dumps(change["value"])
        lines.append(
            f"      {change['delivered_at']} {change['name']}: {before}{after} by {change['sync']}"
            f" (partition {change['partition']}, version {_when(change)}, run {change['run_id']})"
        )
    if not history:
        lines.append("      none recorded (a value set when the profile was created is explained above)")
    return lines


def _where(origin: dict[str, Any]) -> str:
    return (
        f"partition {origin['partition']}, version {_when(origin)}, run {origin['run_id']},"
        f" delivered {origin['delivered_at']}"
    )


def _when(versioned: dict[str, Any]) -> str:
    """The source time a version stands for, with the number; the number alone when it is an order."""
    time = versioned["version_time"]
    return f"{time} ({versioned['version']})" if time else str(versioned["version"])
