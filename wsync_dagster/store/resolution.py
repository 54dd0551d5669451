"""Identity resolution: which profile each distinct set of identities belongs to."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    """The identities a delivery has reached so far: who owns each identity, what each profile holds.

    A profile in the graph is there with all its identities, so an identity missing from owner is either
    unowned or owned by a profile the graph has not reached yet (see looked_up).
    """

    owner: dict[Identity, str] = field(default_factory=dict)
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    # Identities whose stored owner, if any, has been added: missing from owner means unowned.
    looked_up: set[Identity] = field(default_factory=set)

    def not_looked_up(self, identities: Iterable[Identity]) -> set[Identity]:
        """Those of the identities whose stored owner may still be missing from the graph."""
        return {i for i in identities if i not in self.owner and i not in self.looked_up}

    def add_stored(self, looked_up: set[Identity], rows: Iterable[tuple[str, str, str]]) -> None:
        """Add what the store holds for looked-up identities: (profile_id, identity_type, value) rows."""
        self.looked_up |= looked_up
        for profile_id, identity_type, value in rows:
            self.owner[(identity_type, value)] = profile_id
            self.held.setdefault(profile_id, {})[identity_type] = value


@dataclass
class SettledKeys:
    """Identity keys (the mapped _identity_key text) whose profile and conflict are final for the delivery."""

    keys: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    profile_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    conflicts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: pa.Array) -> pa.Array:
        """Per key, its position among the settled keys; null when not settled."""
        return pc.index_in(keys, value_set=self.keys)

    def add(self, keys: pa.Array, profile_ids: pa.Array, conflicts: np.ndarray) -> None:
        """Settle more keys."""
        self.keys = pa.concat_arrays([self.keys, keys])
        self.profile_ids = pa.concat_arrays([self.profile_ids, profile_ids])
        self.conflicts = np.concatenate([self.conflicts, conflicts])


@dataclass
class Resolution:
    """The outcome for each distinct identity key, and what must be written for it."""

    profile_ids: list[str | None] = field(default_factory=list)  # per key; None when skipped
    conflicts: list[bool] = field(default_factory=list)  # per key
    created: list[str] = field(default_factory=list)
    attached: list[tuple[str, str, str]] = field(default_factory=list)  # (profile_id, type, value)
    gained_identity: set[str] = field(default_factory=set)  # existing profiles that got a new identity
    skipped: int = 0
    # Per key: every identity is owned now. Owners never change within a delivery, so the key's profile
    # and conflict stay the same for the rest of it.
    settled: list[bool] = field(default_factory=list)


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
                result.settled.append(False)
                continue
            # An unowned identity always exists here: a candidate is only refused for a higher-priority
            # identity the row carries, and any identity above the first owned one is unowned.
            seed_type, seed_value = next(i for i in identities if i not in graph.owner)
            profile_id = profile_id_for(environment, seed_type, seed_value)
            graph.held[profile_id] = {}
            result.created.append(profile_id)
        held = graph.held[profile_id]
        conflict = False
        settled = True
        for identity in identities:
            owner = graph.owner.get(identity)
            if owner is None:
                if identity[0] in held:
                    settled = False
                    continue
                graph.owner[identity] = profile_id
                held[identity[0]] = identity[1]
                result.attached.append((profile_id, *identity))
                result.gained_identity.add(profile_id)
            elif owner != profile_id:
                conflict = True
        result.profile_ids.append(profile_id)
        result.conflicts.append(conflict)
        result.settled.append(settled)
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
