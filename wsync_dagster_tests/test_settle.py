"""Settling a batch's easy identity keys set-wise (store/settle.py) leaves the store exactly as resolving every
key with resolution.resolve does: profiles and their ids, identities with their owners and versions,
conflicts, attributes and counts; on random batches, on both backends."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from wsync_dagster import batches as b
from wsync_dagster.store import ProfileStore, planner
from wsync_dagster_tests.conftest import STORE_BACKENDS
from wsync_dagster_tests.test_profile_store import mapped

PROTECTIONS = ("create_and_update", "create_and_update", "update_only")


def random_deliveries(rng: random.Random) -> list[tuple[str, list[pa.RecordBatch]]]:
    """A few deliveries of a few batches, identities drawn from a pool small enough that keys meet: new
    people, returning ones, changed e-mails, shared identities, conflicts, ties, events."""
    pool = rng.choice((6, 20, 60))
    row = 0
    deliveries = []
    for _ in range(rng.randint(2, 4)):
        batches = []
        events = rng.random() < 0.25
        for _ in range(rng.randint(1, 3)):
            rows: list[dict[str, Any]] = []
            for _ in range(rng.randint(1, 25)):
                identities = {
                    "customer_id": f"C{rng.randrange(pool)}" if rng.random() < 0.8 else None,
                    "email": f"e{rng.randrange(pool)}@x" if rng.random() < 0.6 else None,
                    "mpid": f"m{rng.randrange(pool)}" if rng.random() < 0.2 else None,
                }
                if not any(identities.values()):
                    identities["customer_id"] = f"C{rng.randrange(pool)}"
                data: dict[str, Any] = {t: v for t, v in identities.items() if v is not None}
                data[b.ROW] = row
                data[b.VERSION] = rng.randint(1, 5)
                if events:
                    data[b.EVENT_ID] = f"E{row}"
                else:
                    data["plan"] = rng.choice(("free", "pro", None))
                rows.append(data)
                row += 1
            # Every batch names the same columns, so each row lists each identity type (None when absent).
            for data in rows:
                for identity_type in ("customer_id", "email", "mpid"):
                    data.setdefault(identity_type, None)
            batches.append(mapped(*rows))
        deliveries.append((rng.choice(PROTECTIONS), batches))
    return deliveries


def run(store: ProfileStore, deliveries: list[tuple[str, list[pa.RecordBatch]]]) -> list[Any]:
    """Deliver them all; each delivery's counts, then everything the store holds about the profiles."""
    seen: list[Any] = []
    for n, (protection, batches) in enumerate(deliveries):
        with store.delivery(
            sync="crm_users", environment="production", partitions=[f"p{n}"], input_protection=protection
        ) as delivery:
            for batch in batches:
                delivery.apply_batch(batch)
        seen.append(delivery.counts.as_dict())
    db = store._db
    for sql in (
        "SELECT profile_id, environment FROM profiles ORDER BY 1",
        "SELECT identity_type, value, profile_id, version FROM identities ORDER BY 1, 2",
        "SELECT partition_key, row_number, reason, kind FROM rejects ORDER BY 1, 2, 3",
        "SELECT profile_id, name, value, version FROM attributes ORDER BY 1, 2",
        "SELECT event_id, profile_id FROM events ORDER BY 1",
    ):
        seen.append([tuple(row) for row in db.rows(sql)])
    return seen


@pytest.mark.parametrize("backend", STORE_BACKENDS)
def test_set_wise_settling_leaves_the_store_as_resolving_each_key(
    backend: str, make_store: Callable[..., ProfileStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    for seed in range(200 if backend == "sqlite" else 40):
        rng = random.Random(seed)
        deliveries = random_deliveries(rng)
        # Now and then the delivery's graph starts over mid-delivery, as a big delivery's does.
        monkeypatch.setattr(planner, "RESOLUTION_ENTRIES_MAX", rng.choice((100_000, 8)))
        monkeypatch.setattr(planner, "SET_WISE", False)
        expected = run(make_store(f"slow{seed}", backend), deliveries)
        monkeypatch.setattr(planner, "SET_WISE", True)
        got = run(make_store(f"fast{seed}", backend), deliveries)
        assert got == expected, f"seed {seed}: {json.dumps(deliveries_summary(deliveries))}"


def deliveries_summary(deliveries: list[tuple[str, list[pa.RecordBatch]]]) -> list[Any]:
    """The deliveries as rows, to read a failing seed by."""
    return [(protection, [batch.to_pylist() for batch in batches]) for protection, batches in deliveries]


def odd_deliveries(values: list[str]) -> list[tuple[str, list[pa.RecordBatch]]]:
    """Users with these customer ids, then their events and those of two more (one unknown: skipped)."""
    users = [{"customer_id": value, "plan": "free", b.ROW: n} for n, value in enumerate(values)]
    events = [
        {"customer_id": value, b.EVENT_ID: f"E{n}", b.ROW: 100 + n, b.VERSION: 2}
        for n, value in enumerate([*values, "unknown", values[0]])
    ]
    return [("create_and_update", [mapped(*users)]), ("update_only", [mapped(*events)])]


@pytest.mark.parametrize(("backend", "nul"), [("sqlite", False), ("sqlite", True), ("postgresql", False)])
def test_the_json_look_up_finds_the_owners_the_staged_one_finds(
    backend: str, nul: bool, make_store: Callable[..., ProfileStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's stored owners are looked up through JSON arrays: values with quotes, backslashes, non-ASCII
    or JSON-looking text leave the store as the staged look-up does; a batch with a NUL in a value (JSON
    would cut it short; PostgreSQL's text cannot hold one) is looked up staged."""
    values = [
        'a"b',
        "c\\d",
        "\u00e9\u2028\u00fc",
        "[1, 2]",
        "null",
        "plain",
        "C1",
        "a\U0001f600b",
        "tab\tx",
    ] + (["x\x00y"] if nul else [])
    deliveries = odd_deliveries(values)
    staged_look_ups: list[int] = []
    look_up = planner.Delivery._stored_owners_staged

    def counted(self: planner.Delivery, keys: Any) -> Any:
        staged_look_ups.append(keys.count)
        return look_up(self, keys)

    monkeypatch.setattr(planner.Delivery, "_stored_owners_staged", counted)
    got = run(make_store("json", backend), deliveries)
    assert bool(staged_look_ups) is nul
    monkeypatch.setattr(planner, "_has_nul", lambda values: True)  # every look-up staged
    assert got == run(make_store("staged", backend), deliveries)
    assert staged_look_ups
    assert got[1]["events_written"] == len(values) + 1 and got[1]["rows_skipped"] == 1
