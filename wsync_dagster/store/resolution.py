"""Identity resolution: which profile each distinct set of identities belongs to."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

CREATE_AND_UPDATE = "create_and_update"
UPDATE_ONLY = "update_only"
READ_ONLY = "read_only"
INPUT_PROTECTIONS: tuple[str, ...] = (CREATE_AND_UPDATE, UPDATE_ONLY, READ_ONLY)

# (identity type, value)
Identity = tuple[str, str]


def profile_id_for(environment: str, identity_type: str, value: str) -> str:
    """Deterministic id of the profile an identity creates, so a re-run after a kill gives the same ids."""
    return hashlib.sha256(f"{environment}|{identity_type}|{value}".encode()).hexdigest()[:16]


@dataclass
class IdentityGraph:
    """The stored identities a batch can reach: who owns each identity, what each profile holds."""

    owner: dict[Identity, str] = field(default_factory=dict)
    held: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str]]) -> IdentityGraph:
        """Build from (profile_id, identity_type, value) rows."""
        graph = cls()
        for profile_id, identity_type, value in rows:
            graph.owner[(identity_type, value)] = profile_id
            graph.held.setdefault(profile_id, {})[identity_type] = value
        return graph


@dataclass
class Resolution:
    """The outcome for each distinct identity key, and what must be written for it."""

    profile_ids: list[str | None] = field(default_factory=list)  # per key; None when skipped
    conflicts: list[bool] = field(default_factory=list)  # per key
    created: list[str] = field(default_factory=list)
    attached: list[tuple[str, str, str]] = field(default_factory=list)  # (profile_id, type, value)
    gained_identity: set[str] = field(default_factory=set)  # existing profiles that got a new identity
    skipped: int = 0


def resolve(keys: list[list[Identity]], graph: IdentityGraph, environment: str, create: bool) -> Resolution:
    """Resolve keys in order (each key's identities in priority order), updating graph as profiles form."""
    result = Resolution()
    for identities in keys:
        profile_id = _match(identities, graph)
        if profile_id is None:
            if not create:
                result.skipped += 1
                result.profile_ids.append(None)
                result.conflicts.append(False)
                continue
            # An unowned identity always exists here: a candidate is only refused for a higher-priority
            # identity the row carries, and any identity above the first owned one is unowned.
            seed_type, seed_value = next(i for i in identities if i not in graph.owner)
            profile_id = profile_id_for(environment, seed_type, seed_value)
            graph.held[profile_id] = {}
            result.created.append(profile_id)
        held = graph.held[profile_id]
        conflict = False
        for identity in identities:
            owner = graph.owner.get(identity)
            if owner is None and identity[0] not in held:
                graph.owner[identity] = profile_id
                held[identity[0]] = identity[1]
                result.attached.append((profile_id, *identity))
                result.gained_identity.add(profile_id)
            elif owner is not None and owner != profile_id:
                conflict = True
        result.profile_ids.append(profile_id)
        result.conflicts.append(conflict)
    result.gained_identity.difference_update(result.created)
    return result


def _match(identities: list[Identity], graph: IdentityGraph) -> str | None:
    """First owner, in priority order, that holds no different value for a higher-priority identity."""
    for rank, identity in enumerate(identities):
        owner = graph.owner.get(identity)
        if owner is None:
            continue
        held = graph.held[owner]
        if all(held.get(identity_type, value) == value for identity_type, value in identities[:rank]):
            return owner
    return None
