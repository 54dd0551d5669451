"""Identity resolution: which profile each distinct set of identities belongs to, and identity changes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wsync_dagster.identities import priority

if TYPE_CHECKING:
    from wsync_dagster.store.settle import Settled

CREATE_AND_UPDATE = "create_and_update"
UPDATE_ONLY = "update_only"
READ_ONLY = "read_only"
INPUT_PROTECTIONS: tuple[str, ...] = (CREATE_AND_UPDATE, UPDATE_ONLY, READ_ONLY)

# (identity type, value)
Identity = tuple[str, str]
# When an identity was last asserted: (version, row); stored identities have row -1, so that on equal
# versions a row of the open delivery wins, as ties go to the later delivery.
Stamp = tuple[int, int]


# A new profile's id: the number of the row that created it (hex, this many digits; past 16**10 rows in one run
# it wraps, which costs order, not uniqueness), then a hash of the identity that seeded it.
_ROW_DIGITS = 10
_SEED_DIGITS = 10


def profile_id_for(environment: str, identity_type: str, value: str, row: int, attempt: int = 0) -> str:
    """Deterministic id of the profile an identity creates at a row of a run, so a re-run after a kill gives
    the same ids. The row leads so that a delivery creates its profiles in rising id order: every index keyed
    by profile id is then written at its end, or in one sweep, not at pages all over it (a hash alone put a
    1M-user initial sync's writes at random beyond SQLite's page cache and PostgreSQL's buffers). The seed's
    hash tells apart profiles that runs created at the same row; an id taken anyway gets the next attempt."""
    suffix = f"|{attempt}" if attempt else ""
    seed = hashlib.sha256(f"{environment}|{identity_type}|{value}{suffix}".encode()).hexdigest()[
        :_SEED_DIGITS
    ]
    return f"{row % 16**_ROW_DIGITS:0{_ROW_DIGITS}x}{seed}"


@dataclass
class IdentityGraph:
    """The identities a delivery has reached so far: who owns each identity, what each profile holds.

    A profile in the graph is there with all its identities, so an identity missing from owner is either
    unowned or owned by a profile the graph has not reached yet (see looked_up).
    """

    owner: dict[Identity, str] = field(default_factory=dict)
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    stamp: dict[Identity, Stamp] = field(default_factory=dict)
    # Identities whose stored owner, if any, has been added: missing from owner means unowned.
    looked_up: set[Identity] = field(default_factory=set)

    def not_looked_up(self, identities: Iterable[Identity]) -> set[Identity]:
        """Those of the identities whose stored owner may still be missing from the graph."""
        return {i for i in identities if i not in self.owner and i not in self.looked_up}

    def add_stored(self, looked_up: set[Identity], rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Add what the store holds for looked-up identities: (profile_id, type, value, version) rows."""
        self.looked_up |= looked_up
        for profile_id, identity_type, value, version in rows:
            identity = (identity_type, value)
            if identity in self.owner:
                continue  # already known, with the stamp of the row that asserted it in this delivery
            self.owner[identity] = profile_id
            self.held.setdefault(profile_id, {})[identity_type] = value
            self.stamp[identity] = (version, -1)

    def describe(self, profile_id: str) -> str:
        """A profile by its highest-priority identity, e.g. customer_id=C2."""
        held = self.held.get(profile_id, {})
        if not held:
            return f"profile {profile_id}"
        identity_type = min(held, key=priority)
        return f"{identity_type}={held[identity_type]}"


@dataclass
class Resolution:
    """The outcome for each distinct identity key, and what must be written for it."""

    profile_ids: list[str | None] = field(default_factory=list)  # per key; None when skipped
    conflicts: list[str | None] = field(default_factory=list)  # per key: why it conflicts, or None
    created: list[str] = field(default_factory=list)
    # Identities whose owner or stamp this resolution changed, with the owner they had before it.
    touched: dict[Identity, str | None] = field(default_factory=dict)
    updated: set[str] = field(default_factory=set)  # existing profiles whose identities changed
    identities_changed: int = 0
    # The keys settled set-wise (store/settle.py), whose new identities and stamps are written with these.
    settled: Settled | None = None


@dataclass(frozen=True)
class IdentityKey:
    """One distinct set of a row's identities (in priority order) and its newest row's stamp."""

    identities: list[Identity]
    stamp: Stamp


def resolve(
    keys: list[IdentityKey],
    graph: IdentityGraph,
    environment: str,
    create: bool,
    profile_exists: Callable[[str], bool],
) -> Resolution:
    """Resolve keys as if in order, updating graph as profiles form and identities change.

    Most keys are easy and independent of every other key of the batch: their identities occur in no other
    key, and either no one owns them (a new profile) or one profile owns them all that no other key can
    reach (the same profile, at most a newer stamp). Those are settled directly; the rest go through the
    exact rules in order (resolve_one). The outcome is the same as taking every key through resolve_one in
    order (test_resolution.py compares both).
    """
    result = Resolution(profile_ids=[None] * len(keys), conflicts=[None] * len(keys))
    easy, hard = _split(keys, graph)
    for index in easy:
        _settle(index, keys[index], graph, environment, create, profile_exists, result)
    for index in hard:
        resolve_one(index, keys[index], graph, environment, create, profile_exists, result)
    # Created in key order, whichever path created them.
    first: dict[str, int] = {}
    for index, profile_id in enumerate(result.profile_ids):
        if profile_id is not None:
            first.setdefault(profile_id, index)
    result.created.sort(key=lambda profile_id: first.get(profile_id, len(keys)))
    result.updated.difference_update(result.created)
    return result


def _split(keys: list[IdentityKey], graph: IdentityGraph) -> tuple[list[int], list[int]]:
    """Indexes of the keys that can be settled on their own, and of those that need the rules in order."""
    seen: dict[Identity, int] = {}
    for key in keys:
        for identity in key.identities:
            seen[identity] = seen.get(identity, 0) + 1
    owner = graph.owner
    hard: set[int] = set()
    reachable: set[str] = set()  # profiles a hard key may change
    candidates: list[tuple[int, str]] = []  # (index, owner) of keys wholly owned by one profile
    for index, key in enumerate(keys):
        owners = {owner.get(identity) for identity in key.identities}
        shared = any(seen[identity] > 1 for identity in key.identities)
        if not shared and owners == {None}:
            continue
        if not shared and len(owners) == 1:
            candidates.append((index, next(iter(owners))))  # type: ignore[arg-type]
            continue
        hard.add(index)
        reachable.update(profile_id for profile_id in owners if profile_id is not None)
    for index, profile_id in candidates:
        if profile_id in reachable:
            hard.add(index)
    easy = [index for index in range(len(keys)) if index not in hard]
    return easy, sorted(hard)


def _settle(
    index: int,
    key: IdentityKey,
    graph: IdentityGraph,
    environment: str,
    create: bool,
    profile_exists: Callable[[str], bool],
    result: Resolution,
) -> None:
    """An easy key: a new profile for identities no one owns, or the one owner (a newer stamp at most)."""
    identities = key.identities
    profile_id = graph.owner.get(identities[0])
    if profile_id is None:
        if not create:
            return
        profile_id = _new_profile_id(environment, identities[0], key.stamp[1], graph, profile_exists)
        graph.held[profile_id] = {identity_type: value for identity_type, value in identities}
        result.created.append(profile_id)
        for identity in identities:
            result.touched.setdefault(identity, None)
            graph.owner[identity] = profile_id
            graph.stamp[identity] = key.stamp
    else:
        for identity in identities:
            if key.stamp > graph.stamp[identity]:
                result.touched.setdefault(identity, profile_id)
                graph.stamp[identity] = key.stamp
    result.profile_ids[index] = profile_id


def resolve_one(
    index: int,
    key: IdentityKey,
    graph: IdentityGraph,
    environment: str,
    create: bool,
    profile_exists: Callable[[str], bool],
    result: Resolution,
) -> None:
    """One key through the exact rules, into `result` at `index` (what `resolve` does for every hard key)."""

    def touch(identity: Identity) -> None:
        result.touched.setdefault(identity, graph.owner.get(identity))

    identities = key.identities
    profile_id = _match(identities, graph)
    if profile_id is None:
        if not create:
            return
        # An unowned identity always exists here: a candidate is only refused for a higher-priority
        # identity the row carries, and any identity above the first owned one is unowned.
        seed = next(i for i in identities if i not in graph.owner)
        profile_id = _new_profile_id(environment, seed, key.stamp[1], graph, profile_exists)
        graph.held[profile_id] = {}
        result.created.append(profile_id)
    held = graph.held[profile_id]
    conflicts: list[str] = []
    for identity in identities:
        identity_type, value = identity
        owner = graph.owner.get(identity)
        if owner == profile_id:
            if key.stamp > graph.stamp[identity]:
                touch(identity)
                graph.stamp[identity] = key.stamp
            continue
        if owner is not None:
            conflicts.append(f"{identity_type}={value} belongs to {graph.describe(owner)}")
            continue
        current = held.get(identity_type)
        if current is not None:
            if key.stamp < graph.stamp[(identity_type, current)]:
                continue  # an older row never puts back an identity that a newer one replaced
            touch((identity_type, current))
            del graph.owner[(identity_type, current)]
            del graph.stamp[(identity_type, current)]
            result.identities_changed += 1
        touch(identity)
        graph.owner[identity] = profile_id
        graph.stamp[identity] = key.stamp
        held[identity_type] = value
        result.updated.add(profile_id)
    result.profile_ids[index] = profile_id
    result.conflicts[index] = (
        f"identity conflict: {'; '.join(conflicts)}; the row went to {graph.describe(profile_id)}"
        if conflicts
        else None
    )


def _new_profile_id(
    environment: str, seed: Identity, row: int, graph: IdentityGraph, profile_exists: Callable[[str], bool]
) -> str:
    """The seed's profile id at its key's newest row; a released identity may seed a second profile, which
    then gets the next id."""
    attempt = 0
    while True:
        profile_id = profile_id_for(environment, *seed, row, attempt)
        if profile_id not in graph.held and not profile_exists(profile_id):
            return profile_id
        attempt += 1


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


def match_existing(identities: list[Identity], graph: IdentityGraph) -> tuple[str | None, str | None]:
    """The profile a row's identities find by the upsert rule, without creating or moving anything, and
    why the match conflicts (another identity of the row belongs to another profile), if it does."""
    profile_id = _match(identities, graph)
    if profile_id is None:
        return None, None
    others = [
        f"{identity_type}={value} belongs to {graph.describe(owner)}"
        for identity_type, value in identities
        if (owner := graph.owner.get((identity_type, value))) is not None and owner != profile_id
    ]
    if not others:
        return profile_id, None
    return (
        profile_id,
        f"identity conflict: {'; '.join(others)}; nothing was removed from {graph.describe(profile_id)}",
    )
