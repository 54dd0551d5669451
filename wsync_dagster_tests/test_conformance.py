"""One conformance suite for every warehouse engine that runs here: the same rows and the same sync file
(apart from `connection`) give the same profiles. A new engine joins by adding its module to ENGINES."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterInstance

from wsync_dagster.runner import run_sync
from wsync_dagster.settings import profile_store_url
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.engines import ENGINES, Engine, start

USERS = pa.table(
    {
        "customer_id": pa.array(["C1", "C2", "C3"]),
        "email": pa.array(["ada@example.com", None, "cy@example.com"]),
        "plan": pa.array(["pro", "free", None]),
        "seats": pa.array([3, 1, None], pa.int64()),
        "score": pa.array([0.5, 2.25, None], pa.float64()),
        "balance": pa.array([Decimal("12.50"), Decimal("-3.00"), None], pa.decimal128(10, 2)),
        "active": pa.array([True, False, None]),
        "signup_date": pa.array([date(2023, 5, 1), date(2023, 6, 2), None], pa.date32()),
        "last_login": pa.array(
            [datetime(2024, 1, 1, 9, 30), None, datetime(2024, 1, 2, 23, 59, 59)], pa.timestamp("us")
        ),
        "last_login_tz": pa.array(
            [datetime(2024, 1, 1, 9, 30, tzinfo=UTC), None, None], pa.timestamp("us", tz="UTC")
        ),
        "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
        "updated_at": pa.array(
            [datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 11), datetime(2024, 1, 2, 9)], pa.timestamp("us")
        ),
    }
)

EVENTS = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "customer_id": pa.array(["C1", "C1", "C3"]),
        "name": pa.array(["login", "purchase", "login"]),
        "amount": pa.array([None, Decimal("9.99"), None], pa.decimal128(10, 2)),
        "seen_at": pa.array(
            [datetime(2024, 1, 1, 8), datetime(2024, 1, 1, 9, 15), datetime(2024, 1, 2, 7)],
            pa.timestamp("us"),
        ),
    }
)

USER_COLUMNS = ", ".join(USERS.column_names)

EXPECTED = {
    "C1": {
        "identities": {"customer_id": "C1", "email": "ada@example.com"},
        "attributes": {
            "active": True,
            "balance": 12.5,
            "last_login": "2024-01-01 09:30:00",
            "last_login_tz": "2024-01-01 09:30:00+00",
            "plan": "pro",
            "score": 0.5,
            "seats": 3,
            "signup_date": "2023-05-01",
            "tags": ["a", "b"],
        },
        "events": [
            ("purchase", 1704100500000, {"amount": 9.99}),
            ("login", 1704096000000, {"amount": None}),
        ],
    },
    "C2": {
        "identities": {"customer_id": "C2"},
        "attributes": {
            "active": False,
            "balance": -3.0,
            "plan": "free",
            "score": 2.25,
            "seats": 1,
            "signup_date": "2023-06-02",
            "tags": [],
        },
        "events": [],
    },
    "C3": {
        "identities": {"customer_id": "C3", "email": "cy@example.com"},
        "attributes": {"last_login": "2024-01-02 23:59:59"},
        "events": [("login", 1704178800000, {"amount": None})],
    },
}


def _expected(engine: Engine) -> dict:
    """EXPECTED as the engine can hold USERS: where an engine has no NULL array (BigQuery stores and returns
    an empty one), a NULL list is the empty list."""
    if not getattr(engine, "stores_null_lists_as_empty", False):
        return EXPECTED
    empty = {
        row["customer_id"] for row in USERS.select(["customer_id", "tags"]).to_pylist() if row["tags"] is None
    }
    return {
        c: {**p, "attributes": {**p["attributes"], "tags": []}} if c in empty else p
        for c, p in EXPECTED.items()
    }


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path: Path) -> Iterator[Engine]:
    yield from start(request.param, tmp_path)


def _profiles() -> dict:
    store = open_profile_store(profile_store_url())
    try:
        found = {c: store.profile("customer_id", c) for c in EXPECTED}
    finally:
        store.close()
    return {
        c: {
            "identities": p["identities"],
            "attributes": p["attributes"],
            "events": [
                (e["event_name"], e["timestamp_unixtime_ms"], e["data"]["custom_attributes"])
                for e in p["events"]
            ],
        }
        for c, p in found.items()
        if p is not None
    }


def _run(write_sync, sync: dict, **kwargs) -> None:
    spec = load_sync_file(write_sync(sync))
    store = open_profile_store(profile_store_url())
    try:
        run_sync(spec, store, DagsterInstance.ephemeral(), **kwargs)
    finally:
        store.close()


def _user_sync(connection: dict, **sync) -> dict:
    return {
        "name": "users",
        "data_type": "user",
        "connection": connection,
        "data_model": {"sql": f"SELECT {USER_COLUMNS} FROM crm.users"},
        "sync": sync,
    }


def _event_sync(connection: dict) -> dict:
    return {
        "name": "events",
        "data_type": "event",
        "connection": connection,
        "data_model": {"sql": "SELECT id, customer_id, name, amount, seen_at FROM web.events"},
        "mapping": [
            {"type": "column", "column": "id", "field": "events.data.source_message_id"},
            {"type": "column", "column": "name", "field": "events.data.event_name"},
            {"type": "column", "column": "seen_at", "field": "events.data.timestamp_unixtime_ms"},
            {"type": "column", "column": "amount", "field": "events.data.custom_attributes.amount"},
        ],
        "sync": {
            "mode": "incremental",
            "iterator": "seen_at",
            "iterator_type": "timestamp",
            "historical_start": "2024-01-01",
        },
    }


INCREMENTAL = {
    "mode": "incremental",
    "iterator": "updated_at",
    "iterator_type": "timestamp",
    "historical_start": "2024-01-01",
}


def test_an_incremental_user_and_event_sync_give_the_same_profiles_on_every_engine(engine, write_sync):
    connection = engine.load({"crm.users": USERS, "web.events": EVENTS})

    _run(write_sync, _user_sync(connection, **INCREMENTAL), partition="2024-01-01..2024-01-02")
    _run(write_sync, _event_sync(connection), partition="2024-01-01..2024-01-02")

    assert _profiles() == _expected(engine)


def test_a_full_mode_user_sync_gives_the_same_profiles_on_every_engine(engine, write_sync):
    connection = engine.load({"crm.users": USERS, "web.events": EVENTS})

    _run(write_sync, _user_sync(connection, mode="full"), partition="20240105T000000")
    _run(write_sync, _event_sync(connection), partition="2024-01-01..2024-01-02")

    # Without an iterator, updated_at is an attribute like any other column.
    updated = {"C1": "2024-01-01 10:00:00", "C2": "2024-01-01 11:00:00", "C3": "2024-01-02 09:00:00"}
    assert _profiles() == {
        c: {**p, "attributes": {**p["attributes"], "updated_at": updated[c]}}
        for c, p in _expected(engine).items()
    }


def test_an_incremental_window_reads_only_its_rows_on_every_engine(engine, write_sync):
    connection = engine.load({"crm.users": USERS, "web.events": EVENTS})

    # Without lookback, so only the window's own bounds decide what is read.
    _run(write_sync, _user_sync(connection, **INCREMENTAL, lookback="0s"), partition="2024-01-02")

    assert set(_profiles()) == {"C3"}
