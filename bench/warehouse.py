"""The scoreboard's data: N users (two identities, five attributes) and Nx10 events in DuckDB, and its syncs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import yaml

HISTORY_DAYS = 30
CHANGED_SHARE = 0.01
ENVIRONMENT = "production"
ATTRIBUTES = ("first_name", "plan", "country", "lifetime_value", "marketing_opt_in")
USERS_SQL = f"SELECT customer_id, email, {', '.join(ATTRIBUTES)}, updated_at FROM bench.users"
EVENTS_SQL = "SELECT event_id, customer_id, event_name, event_ts, amount FROM bench.events"

# Syncs, by the line that runs them.
FULL_SYNC, CHANGES_SYNC, EVENTS_SYNC = "bench_users", "bench_users_changes", "bench_events"


@dataclass(frozen=True)
class BenchData:
    """The two warehouse files (before and after 1% of users changed) and the moment the data ends."""

    warehouse: Path
    changed_warehouse: Path
    as_of: datetime
    users: int
    events: int
    changed: int

    def sync_file(self, name: str, folder: Path, *, changed: bool = False, named: str | None = None) -> Path:
        """Write the named sync's YAML (reading the changed copy, if asked; under another sync's name, if
        given: its registers are that sync's) into `folder`; its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}{'_changed' if changed else ''}{f'_as_{named}' if named else ''}.yaml"
        definition = {**self._definition(name, changed), **({"name": named} if named else {})}
        path.write_text(yaml.safe_dump(definition, sort_keys=False), encoding="utf-8")
        return path

    def _definition(self, name: str, changed: bool) -> dict:
        incremental = {
            "mode": "incremental",
            "iterator_type": "timestamp",
            "schedule": "interval",
            "start": self.as_of.isoformat(),
            "historical_start": (self.as_of - timedelta(days=HISTORY_DAYS)).date().isoformat(),
        }
        user_mapping = [
            {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
            {"type": "column", "column": "email", "field": "user_identities.email"},
            {"type": "ignore", "column": "updated_at"},
        ] + [{"type": "column", "column": a, "field": f"user_attributes.{a}"} for a in ATTRIBUTES]
        if name == FULL_SYNC:
            warehouse = self.changed_warehouse if changed else self.warehouse
            return _sync(
                name, "user", warehouse, USERS_SQL, user_mapping, {"mode": "full", "schedule": "on_demand"}
            )
        if name == CHANGES_SYNC:
            settings = {**incremental, "iterator": "updated_at", "frequency": "hourly"}
            return _sync(name, "user", self.changed_warehouse, USERS_SQL, user_mapping, settings)
        if name == EVENTS_SYNC:
            mapping = [
                {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
                {"type": "static", "value": "custom_event", "field": "events.event_type"},
                {"type": "column", "column": "event_name", "field": "events.data.event_name"},
                {"type": "static", "value": "other", "field": "events.data.custom_event_type"},
                {"type": "column", "column": "event_ts", "field": "events.data.timestamp_unixtime_ms"},
                {"type": "column", "column": "event_id", "field": "events.data.source_message_id"},
                {"type": "column", "column": "amount", "field": "events.data.custom_attributes.amount"},
            ]
            settings = {**incremental, "iterator": "event_ts", "frequency": "daily"}
            return _sync(name, "event", self.warehouse, EVENTS_SQL, mapping, settings)
        raise ValueError(f"no bench sync named {name}")


def _sync(name: str, data_type: str, warehouse: Path, sql: str, mapping: list, settings: dict) -> dict:
    return {
        "name": name,
        "data_type": data_type,
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": sql},
        "mapping": mapping,
        "sync": {"environment": ENVIRONMENT, **settings},
    }


def build(folder: Path, users: int, events: int) -> BenchData:
    """Generate the users and events, then a copy in which 1% of the users changed plan and were updated."""
    folder.mkdir(parents=True, exist_ok=True)
    as_of = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    start = as_of - timedelta(days=HISTORY_DAYS)
    span_us = HISTORY_DAYS * 86_400 * 1_000_000
    ts = f"TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}'"
    warehouse = folder / "scoreboard.duckdb"
    con = duckdb.connect(str(warehouse))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute("CREATE SCHEMA bench")
        con.execute(
            f"""CREATE TABLE bench.users AS
            SELECT 'C' || lpad(i::VARCHAR, 9, '0') AS customer_id,
                   'user' || i || '@example.com' AS email,
                   ['Ada', 'Bo', 'Cy', 'Di', 'Ed', 'Flo'][1 + (hash(i * 8 + 1) % 6)::INTEGER] AS first_name,
                   ['free', 'pro', 'team', 'enterprise'][1 + (hash(i * 8 + 2) % 4)::INTEGER] AS plan,
                   ['DE', 'US', 'FR', 'JP', 'BR', 'IN'][1 + (hash(i * 8 + 3) % 6)::INTEGER] AS country,
                   round((hash(i * 8 + 4) % 1000000) / 100.0, 2)::DOUBLE AS lifetime_value,
                   hash(i * 8 + 5) % 2 = 0 AS marketing_opt_in,
                   {ts} + to_microseconds((i::HUGEINT * {span_us} // {users})::BIGINT) AS updated_at
            FROM range({users}) AS t(i)"""
        )
        # Ids rise with time, so the table lies in iterator order (as a warehouse clustered on it would).
        con.execute(
            f"""CREATE TABLE bench.events AS
            SELECT 'E' || lpad(j::VARCHAR, 11, '0') AS event_id,
                   'C' || lpad((hash(j * 8 + 6) % {users})::VARCHAR, 9, '0') AS customer_id,
                   ['page_view', 'search', 'add_to_cart', 'login', 'purchase'][1 + (hash(j * 8 + 7) % 5)::INTEGER]
                       AS event_name,
                   {ts} + to_microseconds((j::HUGEINT * {span_us} // {max(events, 1)})::BIGINT) AS event_ts,
                   round((hash(j * 8 + 8) % 10000) / 100.0, 2)::DOUBLE AS amount
            FROM range({events}) AS t(j)"""
        )
    finally:
        con.close()
    changed_warehouse = folder / "scoreboard_changed.duckdb"
    shutil.copy(warehouse, changed_warehouse)
    step = round(1 / CHANGED_SHARE)
    con = duckdb.connect(str(changed_warehouse))
    try:
        changed_at = f"TIMESTAMP '{as_of + timedelta(minutes=30):%Y-%m-%d %H:%M:%S}'"
        (changed,) = con.execute(
            f"""UPDATE bench.users SET plan = 'changed', updated_at = {changed_at}
            WHERE CAST(substr(customer_id, 2) AS BIGINT) % {step} = 0"""
        ).fetchone()
    finally:
        con.close()
    return BenchData(warehouse, changed_warehouse, as_of, users, events, changed)
