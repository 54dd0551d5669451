"""What a destination receives: one profile's change (identities, attributes set and removed, events)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event of a profile, in the store's terms (mParticle's event shape)."""

    event_id: str  # source_message_id / insert_id: the key the platform deduplicates on
    event_type: str  # custom_event | screen_view | commerce_event
    name: str
    timestamp_ms: int  # UTC epoch milliseconds
    attributes: Mapping[str, Any] = field(default_factory=dict)
    custom_event_type: str = "other"
    data: Mapping[str, Any] = field(default_factory=dict)  # further mParticle `data` keys (product_action, …)


@dataclass(frozen=True)
class ProfileChange:
    """A profile's change since the destination last received it, coalesced to the newest values."""

    profile_id: str
    identities: Mapping[str, str]  # wsync identity type (customer_id, email, …) → value
    attributes: Mapping[str, Any] = field(default_factory=dict)  # set or changed: name → value
    removed: tuple[str, ...] = ()  # attribute names removed
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Reject:
    """An item the platform will not take (or was never sent), with the platform's reason."""

    item: str  # the profile id or event id
    reason: str


@dataclass(frozen=True)
class Erasure:
    """A person to erase at the platform: their profile id and the identities they were forwarded under."""

    profile_id: str
    identities: Mapping[str, str]  # wsync identity type → value, as in ProfileChange
    requested_at: datetime  # when wsync recorded the erasure: part of the request's dedup key
