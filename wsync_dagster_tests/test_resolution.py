"""Identity resolution: settling the easy keys directly gives exactly what the rules give key by key in order."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import pytest

from wsync_dagster.store.resolution import (
    IdentityGraph,
    IdentityKey,
    Resolution,
    match_existing,
    resolve,
    resolve_one,
)

TYPES = ("customer_id", "email", "mpid")


def resolve_in_order(
    keys: list[IdentityKey],
    graph: IdentityGraph,
    environment: str,
    create: bool,
    profile_exists: Callable[[str], bool],
) -> Resolution:
    """Every key through the exact rules, in order: what `resolve` must equal."""
    result = Resolution(profile_ids=[None] * len(keys), conflicts=[None] * len(keys))
    for index, key in enumerate(keys):
        resolve_one(index, key, graph, environment, create, profile_exists, result)
    result.updated.difference_update(result.created)
    return result


def random_graph(rng: random.Random) -> IdentityGraph:
    """Stored profiles holding up to one value per type, drawn from a small pool so keys collide."""
    graph = IdentityGraph()
    for n in range(rng.randint(0, 12)):
        profile_id = f"p{n}"
        held = {t: f"{t[0]}{rng.randint(0, 15)}" for t in TYPES if rng.random() < 0.6}
        held = {t: v for t, v in held.items() if (t, v) not in graph.owner}
        if not held:
            continue
        graph.held[profile_id] = held
        for identity_type, value in held.items():
            graph.owner[(identity_type, value)] = profile_id
            graph.stamp[(identity_type, value)] = (rng.randint(0, 9), -1)
    graph.looked_up = set(graph.owner) | {(t, f"{t[0]}{v}") for t in TYPES for v in range(16)}
    return graph


def random_keys(rng: random.Random) -> list[IdentityKey]:
    """Distinct identity sets of a batch, in row order, each with the stamp of its newest row."""
    keys, seen = [], set()
    for row in range(rng.randint(1, 25)):
        identities = [(t, f"{t[0]}{rng.randint(0, 15)}") for t in TYPES if rng.random() < 0.55]
        if not identities or tuple(identities) in seen:
            continue
        seen.add(tuple(identities))
        keys.append(IdentityKey(identities, (rng.randint(0, 9), row)))
    return keys


@pytest.mark.parametrize("seed", range(400))
@pytest.mark.parametrize("create", [True, False])
def test_settling_easy_keys_first_equals_resolving_every_key_in_order(seed: int, create: bool) -> None:
    """Profile per key, conflicts, created, touched, updated, identity changes and the graph left behind."""
    rng = random.Random(seed)
    graph, keys = random_graph(rng), random_keys(rng)
    stored = {f"p{n}" for n in range(12)}
    exact_graph, fast_graph = copy.deepcopy(graph), copy.deepcopy(graph)
    exact = resolve_in_order(keys, exact_graph, "production", create, stored.__contains__)
    fast = resolve(keys, fast_graph, "production", create, stored.__contains__)
    assert fast.profile_ids == exact.profile_ids
    assert fast.conflicts == exact.conflicts
    assert fast.created == exact.created
    assert fast.touched == exact.touched
    assert fast.updated == exact.updated
    assert fast.identities_changed == exact.identities_changed
    assert (fast_graph.owner, fast_graph.held, fast_graph.stamp) == (
        exact_graph.owner,
        exact_graph.held,
        exact_graph.stamp,
    )


@pytest.mark.parametrize("seed", range(400))
def test_a_delete_finds_the_profile_an_upsert_of_its_identities_would_find_and_changes_nothing(seed: int) -> None:
    """match_existing (deletes, mirror presence) is the upsert rule without creating or moving anything:
    an upsert that creates no profile goes to the same one, and conflicts exactly when the delete does."""
    rng = random.Random(seed)
    graph = random_graph(rng)
    stored = {f"p{n}" for n in range(12)}
    for key in random_keys(rng):
        before = copy.deepcopy(graph)
        found, conflict = match_existing(key.identities, graph)
        upsert = resolve_in_order([key], copy.deepcopy(graph), "production", False, stored.__contains__)
        assert (graph.owner, graph.held, graph.stamp) == (before.owner, before.held, before.stamp)
        assert found == upsert.profile_ids[0]
        assert (conflict is not None) == (upsert.conflicts[0] is not None)
