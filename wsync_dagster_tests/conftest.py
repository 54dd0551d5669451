"""Fixtures: small DuckDB warehouses, sync files and a profile store, all in a tmp dir."""

from __future__ import annotations

import importlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
import yaml
from dagster import Definitions

from wsync_dagster.settings import profile_store_url
from wsync_dagster.store import ProfileStore, open_profile_store

USERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'Ada', 'pro', TIMESTAMP '2024-01-01 10:15:00'),
    ('C002', 'bob@example.com', 'Bob', 'free', TIMESTAMP '2024-01-01 11:30:00'),
    ('C003', NULL, 'Cy', NULL, TIMESTAMP '2024-01-02 09:00:00');
"""


@pytest.fixture
def make_warehouse(tmp_path: Path) -> Callable[[str], Path]:
    """Build a DuckDB warehouse file from SQL statements; returns its path."""

    def make(sql: str, name: str = "warehouse.duckdb") -> Path:
        path = tmp_path / "data" / name
        path.parent.mkdir(exist_ok=True)
        with duckdb.connect(str(path)) as connection:
            connection.execute(sql)
        return path

    return make


@pytest.fixture
def wsync_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """WSYNC_* pointing into tmp: syncs/, state/ and a SQLite store; returns the syncs folder."""
    syncs = tmp_path / "syncs"
    syncs.mkdir()
    monkeypatch.setenv("WSYNC_SYNCS_DIR", str(syncs))
    monkeypatch.setenv("WSYNC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("WSYNC_PROFILE_STORE", f"sqlite:///{tmp_path / 'state' / 'profiles.sqlite'}")
    return syncs


@pytest.fixture
def write_sync(wsync_env: Path) -> Callable[..., Path]:
    """Write a sync file (a dict, or raw YAML text) into the syncs folder; returns its path."""

    def write(content: dict | str, name: str | None = None) -> Path:
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        file_name = name or (f"{content['name']}.yaml" if isinstance(content, dict) else "sync.yaml")
        path = wsync_env / file_name
        path.write_text(text)
        return path

    return write


def user_sync(warehouse: Path, **overrides) -> dict:
    """A valid incremental user sync over crm.users, with overrides merged in (sync: merged too)."""
    sync = {
        "mode": "incremental",
        "iterator": "updated_at",
        "iterator_type": "timestamp",
        "schedule": "interval",
        "frequency": "daily",
        "start": "2024-01-01T00:00:00Z",
        "historical_start": "2024-01-01",
        **overrides.pop("sync", {}),
    }
    return {
        "name": "crm_users",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, first_name, plan, updated_at FROM crm.users"},
        "sync": sync,
        **overrides,
    }


def code_location() -> Definitions:
    """The definitions `dagster dev` loads, reloaded so they read this test's WSYNC_SYNCS_DIR."""
    return importlib.reload(importlib.import_module("wsync_dagster.definitions")).defs


@pytest.fixture
def store_bytes(wsync_env) -> Callable[[], bytes]:
    """The profile store's file, created before the test: a failed run must leave its bytes as they were."""
    open_profile_store(profile_store_url()).close()
    path = Path(profile_store_url().removeprefix("sqlite:///"))
    return path.read_bytes


def closed_port() -> int:
    """A local TCP port that nothing listens on: a connection to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def profile_store_bytes(tmp_path: Path) -> bytes | None:
    """The embedded profile store's file as it is now (None before the first delivery)."""
    path = tmp_path / "state" / "profiles.sqlite"
    return path.read_bytes() if path.exists() else None


def users_sync(
    connection: dict, sql: str, *, iterator: str = "updated_at", historical_start: str = "2024-01-01", **sync
) -> dict:
    """An incremental user sync named `users` over any warehouse connection, with sync settings merged in."""
    return {
        "name": "users",
        "data_type": "user",
        "connection": connection,
        "data_model": {"sql": sql},
        "sync": {
            "mode": "incremental",
            "iterator": iterator,
            "iterator_type": "timestamp",
            "historical_start": historical_start,
            **sync,
        },
    }


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_store_database() -> Iterator[str]:
    """A scratch PostgreSQL database for profile stores, one for the session; each store gets a schema."""
    import psycopg2

    name = f"wsync_store_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def pg_store_url(database_url: str) -> str:
    """A fresh, empty PostgreSQL store: a new schema of the scratch database, first on the search path."""
    import psycopg2

    schema = f"store_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    conn.close()
    return f"{database_url}?options=-csearch_path%3D{schema}"


def store_sql(url: str, *statements: str) -> list[tuple]:
    """Run SQL on a store as its user would (sqlite3 on the file, psql on the database); the last one's rows."""
    import sqlite3

    import psycopg2

    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            for statement in statements:
                cursor = conn.execute(statement)
            rows = cursor.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ProfileStore]]:
    """Fresh profile stores of the backend the test is parametrized with (`backend`), closed afterwards."""
    opened: list[ProfileStore] = []

    def make(name: str = "profiles", backend: str | None = None) -> ProfileStore:
        kind = backend or request.node.callspec.params.get("backend", "sqlite")
        if kind == "sqlite":
            store = ProfileStore(tmp_path / name / "profiles.sqlite")
        else:
            store = open_profile_store(pg_store_url(request.getfixturevalue("pg_store_database")))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture(params=STORE_BACKENDS)
def cli_store(
    request: pytest.FixtureRequest,
    make_store: Callable[..., ProfileStore],
    monkeypatch: pytest.MonkeyPatch,
    wsync_env: Path,
) -> ProfileStore:
    """A fresh store of each backend, the one `wsync` commands use (set after wsync_env's default)."""
    opened = make_store("cli", request.param)
    monkeypatch.setenv("WSYNC_PROFILE_STORE", opened.url)
    return opened
