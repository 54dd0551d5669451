"""Set-wise settling of a batch's easy identity keys: new profiles, and keys wholly owned by one profile.

Most keys of a batch touch no other key: their identities occur in no other key of the batch, and either no
one owns them (a new profile, seeded by the first of them) or one profile owns them all that no other key can
reach. resolution.resolve settles those one at a time in Python; here they are settled in Arrow and numpy
for the whole batch at once, from the store's owners of the batch's identities. What is left (shared
identities, several or partial owners, identities the delivery's graph already holds, ids already taken) goes
through resolution.resolve, whose outcome with this one is the same as its own for every key
(test_settle.py compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster.store.resolution import profile_id_for


@dataclass(frozen=True)
class BatchKeys:
    """A batch's distinct identity keys column-wise: per identity type (in priority order) its value per
    key (null where the key has none), and the stamp of each key's newest row."""

    types: list[str]
    values: list[pa.Array]
    versions: np.ndarray
    rows: np.ndarray

    @property
    def count(self) -> int:
        """How many keys."""
        return len(self.versions)


@dataclass(frozen=True)
class StoredOwners:
    """Per identity type, per key: the profile owning the key's identity in the store (null if none), and
    the version it was last asserted with (0 if unowned)."""

    profile_ids: list[pa.Array]
    versions: list[np.ndarray]


@dataclass
class Settled:
    """The keys settled set-wise and what must be written for them."""

    settled: np.ndarray  # per key: settled here
    profile_ids: list[str | None]  # per key: its profile, None when skipped or left to resolve
    created: list[str]  # new profiles, in key order
    new_identities: pa.Table  # identity_type, value, profile_id, version: the new profiles' identities
    restamps: pa.Table  # identity_type, value, version: owned identities asserted by a newer row


def settle(
    keys: BatchKeys,
    owners: StoredOwners,
    known: np.ndarray,
    environment: str,
    create: bool,
    taken: Callable[[list[str]], set[str]],
) -> Settled:
    """Settle the easy keys; `known`: per key, whether the delivery's graph holds one of its identities
    (then its stamps there are newer than the store's: left to resolve); `taken`: which of some profile ids
    the store already has."""
    n = keys.count
    present = [pc.is_valid(values).to_numpy(zero_copy_only=False) for values in keys.values]
    owned = [pc.is_valid(profile_ids).to_numpy(zero_copy_only=False) for profile_ids in owners.profile_ids]
    identities = np.sum(present, axis=0) if present else np.zeros(n, dtype=np.int64)
    owned_count = np.sum(owned, axis=0) if owned else np.zeros(n, dtype=np.int64)
    shared = np.zeros(n, dtype=bool)
    for values, has in zip(keys.values, present, strict=True):
        codes = pc.fill_null(values.dictionary_encode().indices, 0).to_numpy(zero_copy_only=False)
        counts = np.bincount(codes[has], minlength=1)
        shared |= has & (counts[codes] > 1)
    alone = (identities > 0) & ~shared & ~known
    new = alone & (owned_count == 0)
    # The key's one owner: the first owner in priority order, which every owned identity must share.
    first_owner = pc.coalesce(*owners.profile_ids) if owners.profile_ids else pa.nulls(n, pa.string())
    same = np.ones(n, dtype=bool)
    for profile_ids in owners.profile_ids:
        same &= pc.fill_null(pc.equal(profile_ids, first_owner), True).to_numpy(zero_copy_only=False)
    whole = alone & (owned_count == identities) & same
    # A profile that a key left to resolve may change is no one key's alone.
    left = ~(new | whole)
    reachable = (
        pc.unique(
            pa.concat_arrays(
                [profile_ids.filter(pa.array(left)) for profile_ids in owners.profile_ids]
            ).drop_null()
        )
        if owners.profile_ids
        else pa.array([], pa.string())
    )
    whole &= ~pc.fill_null(pc.is_in(first_owner, value_set=reachable), False).to_numpy(zero_copy_only=False)

    profile_ids: list[str | None] = [None] * n
    created: list[str] = []
    new_rows: list[int] = []
    if create and new.any():
        new, created, new_rows = _new_profiles(keys, new, environment, taken)
        for index, profile_id in zip(new_rows, created, strict=True):
            profile_ids[index] = profile_id
    for index, profile_id in zip(
        np.flatnonzero(whole).tolist(), first_owner.filter(pa.array(whole)).to_pylist(), strict=True
    ):
        profile_ids[index] = profile_id
    return Settled(
        settled=new | whole,
        profile_ids=profile_ids,
        created=created,
        new_identities=_new_identities(keys, new_rows, created),
        restamps=_restamps(keys, owners, whole),
    )


def _new_profiles(
    keys: BatchKeys, new: np.ndarray, environment: str, taken: Callable[[list[str]], set[str]]
) -> tuple[np.ndarray, list[str], list[int]]:
    """The new keys that get their seed's first id; the others are left to resolve (which tries the next).

    A seed with '|' in it could share a string with another seed's later attempt ('v|1'): left to resolve,
    so that every id given here is one no other key could be given in any order."""
    seed_type = np.full(keys.count, -1, dtype=np.int64)
    for rank in reversed(range(len(keys.types))):
        seed_type[pc.is_valid(keys.values[rank]).to_numpy(zero_copy_only=False)] = rank
    seed_value = pc.coalesce(*keys.values)
    new = new & ~pc.fill_null(pc.match_substring(seed_value, "|"), True).to_numpy(zero_copy_only=False)
    new &= ~np.array(["|" in identity_type for identity_type in keys.types])[seed_type]
    rows = np.flatnonzero(new)
    types = np.array(keys.types, dtype=object)[seed_type[rows]].tolist()
    ids = [
        profile_id_for(environment, identity_type, value, row)
        for identity_type, value, row in zip(
            types, seed_value.take(pa.array(rows)).to_pylist(), keys.rows[rows].tolist(), strict=True
        )
    ]
    refused = taken(ids)
    counts: dict[str, int] = {}
    for profile_id in ids:
        counts[profile_id] = counts.get(profile_id, 0) + 1
    keep = [profile_id not in refused and counts[profile_id] == 1 for profile_id in ids]
    new[rows[~np.array(keep, dtype=bool)]] = False
    kept_rows = rows[np.array(keep, dtype=bool)].tolist()
    return new, [profile_id for profile_id, ok in zip(ids, keep, strict=True) if ok], kept_rows


def _new_identities(keys: BatchKeys, rows: list[int], created: list[str]) -> pa.Table:
    """Every identity of the new profiles' keys, owned by its new profile with its key's version."""
    picked = pa.array(rows, pa.int64())
    profile_ids = pa.array(created, pa.string())
    versions = pa.array(keys.versions[rows] if rows else np.zeros(0, np.int64), pa.int64())
    parts = []
    for identity_type, values in zip(keys.types, keys.values, strict=True):
        taken = values.take(picked)
        has = pc.is_valid(taken)
        count = int(pc.sum(has).as_py() or 0)
        parts.append(
            pa.table(
                {
                    "identity_type": pa.array([identity_type] * count, pa.string()),
                    "value": taken.filter(has).cast(pa.string()),
                    "profile_id": profile_ids.filter(has),
                    "version": versions.filter(has),
                }
            )
        )
    return _concat(parts, ["identity_type", "value", "profile_id", "version"])


def _restamps(keys: BatchKeys, owners: StoredOwners, whole: np.ndarray) -> pa.Table:
    """The owned keys' identities that their newest row asserts with a newer version than the stored one."""
    parts = []
    for identity_type, values, stored in zip(keys.types, keys.values, owners.versions, strict=True):
        newer = whole & pc.is_valid(values).to_numpy(zero_copy_only=False) & (keys.versions > stored)
        picked = pa.array(np.flatnonzero(newer))
        parts.append(
            pa.table(
                {
                    "identity_type": pa.array([identity_type] * len(picked), pa.string()),
                    "value": values.take(picked).cast(pa.string()),
                    "version": pa.array(keys.versions[newer], pa.int64()),
                }
            )
        )
    return _concat(parts, ["identity_type", "value", "version"])


def _concat(parts: list[pa.Table], names: list[str]) -> pa.Table:
    if not parts:
        types = {"version": pa.int64()}
        return pa.table({name: pa.array([], types.get(name, pa.string())) for name in names})
    return pa.concat_tables(parts).sort_by([("identity_type", "ascending"), ("value", "ascending")])
