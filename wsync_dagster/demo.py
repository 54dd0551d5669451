"""The embedded demo: a generated DuckDB warehouse of users and events, and the sync files that read it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import yaml

WAREHOUSE_FILE = "demo_warehouse.duckdb"
HISTORY_DAYS = 365
# Users changed within the last week: an hourly sync's history is one Dagster partition per hour, and
# Dagster records every partition of a backfill, so a year of hourly history costs minutes of bookkeeping.
USER_HISTORY_DAYS = 7
# Short ids ("C1" … "C999") exist so that destinations requiring ≥5-character user ids have rejects to show.
MAX_SHORT_IDS = 300
FIRST_NAMES = ("Ana", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lea", "Mia")
LAST_NAMES = ("Smith", "Garcia", "Muller", "Rossi", "Silva", "Okafor", "Patel", "Kim", "Berg", "Novak", "Roy")
# Shared on purpose, to show identity conflicts: this share of customers carries the e-mail of the customer
# before them, so each pair's second row is an identity_conflict, listed by `wsync rejects demo_users`.
SHARED_EMAIL_SHARE = 0.005
# Two lines, each short enough for an 80-column terminal.
SHARED_EMAILS_NOTE = (
    f"{SHARED_EMAIL_SHARE:.1%} of the demo customers share an e-mail with another customer on purpose:\n"
    "their rows are the demo's identity conflicts (`wsync rejects demo_users`)"
)
# RFC 2606 domains: the demo never holds a deliverable address.
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
# Repeats weight the draw towards the larger markets.
COUNTRIES = ("US", "US", "US", "US", "GB", "GB", "DE", "DE", "FR", "CA", "AU", "NL", "ES", "BR", "IN", "JP")
PAGES = ("/", "/pricing", "/products", "/blog", "/cart", "/account")


@dataclass(frozen=True)
class DemoPaths:
    """Where `build_demo` put the demo warehouse and its sync files."""

    warehouse: Path
    syncs_dir: Path
    sync_files: list[Path]


def build_demo(
    root: Path, *, users: int = 100_000, events: int = 1_000_000, now: datetime | None = None
) -> DemoPaths:
    """Create `root/data/demo_warehouse.duckdb` and the demo sync files in `root/syncs/`."""
    if users < 1 or events < 0:
        raise ValueError(f"the demo needs users >= 1 and events >= 0 (got users={users}, events={events})")
    now = now or datetime.now(UTC)
    as_of = demo_as_of(now)
    root = Path(root)
    warehouse = root / "data" / WAREHOUSE_FILE
    build_demo_warehouse(warehouse, users=users, events=events, as_of=demo_data_end(now))
    syncs_dir = root / "syncs"
    sync_files = write_demo_sync_files(syncs_dir, warehouse, as_of=as_of)
    return DemoPaths(warehouse=warehouse, syncs_dir=syncs_dir, sync_files=sync_files)


def demo_as_of(now: datetime) -> datetime:
    """The UTC midnight that starts `now`'s day (a naive `now` is read as UTC): the demo data ends there."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def demo_data_end(now: datetime) -> datetime:
    """The UTC hour that starts `now`'s hour: the demo data ends there, so its newest rows are recent."""
    # Recent enough for the data-delay checks (an hourly sync warns at 2 hours) on the day of the build;
    # a whole hour, so that builds within one hour give identical data.
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return now.replace(minute=0, second=0, microsecond=0)


def build_demo_warehouse(path: Path, *, users: int, events: int, as_of: datetime) -> None:
    """Generate the demo tables into a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_database(tmp)
    try:
        con = duckdb.connect(str(tmp))
        try:
            # DuckDB draws its bar on stderr even when not a terminal, cluttering `wsync demo` and logs.
            con.execute("SET enable_progress_bar = false")
            for statement in _warehouse_sql(users=users, events=events, as_of=as_of):
                con.execute(statement)
        finally:
            con.close()
        # A WAL left by the replaced warehouse would be replayed onto the new file.
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        _remove_database(tmp)


def _remove_database(path: Path) -> None:
    """Delete a DuckDB file and its WAL, if present."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)


def _coprime_stride(n: int) -> int:
    """A multiplier coprime with `n`, so `(stride * r) % n` permutes 0..n-1."""
    stride = 7_919
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def _pick(row: str, salt: int, choices: tuple[str, ...]) -> str:
    """SQL choosing one of `choices` by the row's draw for `salt`."""
    # The length is inlined because DuckDB evaluates len() of a list literal once per row.
    literal = ", ".join("'" + choice.replace("'", "''") + "'" for choice in choices)
    return f"[{literal}][1 + (draw({row}, {salt}) % {len(choices)})::BIGINT]"


def _warehouse_sql(*, users: int, events: int, as_of: datetime) -> list[str]:
    """The set-based statements that build the demo warehouse (interpolating only numbers and timestamps)."""
    users, events = int(users), int(events)
    short_ids = min(MAX_SHORT_IDS, max(1, users // 300))
    stride = _coprime_stride(users)
    id_width, event_id_width = max(7, len(str(users))), max(10, len(str(events)))
    end = f"TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S}'"
    start = f"TIMESTAMP '{as_of - timedelta(days=HISTORY_DAYS):%Y-%m-%d %H:%M:%S}'"
    year_us = HISTORY_DAYS * 86_400 * 1_000_000
    recent_start = f"TIMESTAMP '{as_of - timedelta(days=USER_HISTORY_DAYS):%Y-%m-%d %H:%M:%S}'"
    recent_us = USER_HISTORY_DAYS * 86_400 * 1_000_000
    return [
        # A pure function of the row number and a per-column salt: same `now`, same data. The salt goes
        # into the hashed integer because hash(i, k) mixes too weakly: one row's draws came out correlated.
        "CREATE TEMP MACRO draw(i, k) AS hash(i * 64 + k)",
        "CREATE TEMP MACRO unit(i, k) AS (draw(i, k) >> 11)::DOUBLE / 9007199254740992.0",
        f"CREATE TEMP MACRO in_year(i, k) AS {start} + to_microseconds((draw(i, k) % {year_us})::BIGINT)",
        f"CREATE TEMP MACRO in_recent(i, k) AS {recent_start} + to_microseconds((draw(i, k) % {recent_us})::BIGINT)",
        f"""CREATE TEMP MACRO customer_id_of(i) AS
            CASE WHEN i <= {short_ids} THEN 'C' || i ELSE 'C' || lpad(i::VARCHAR, {id_width}, '0') END""",
        f"CREATE TEMP MACRO first_name_of(i) AS {_pick('i', 1, FIRST_NAMES)}",
        f"CREATE TEMP MACRO last_name_of(i) AS {_pick('i', 2, LAST_NAMES)}",
        f"""CREATE TEMP MACRO email_of(i) AS
            lower(first_name_of(i) || '.' || last_name_of(i) || i) || '@'
            || {_pick("i", 3, EMAIL_DOMAINS)}""",
        # A customer sharing its predecessor's e-mail; never two in a row, so a shared e-mail has two owners.
        f"""CREATE TEMP MACRO shares_email(i) AS
            i > 1 AND unit(i, 4) < {SHARED_EMAIL_SHARE} AND unit(i - 1, 4) >= {SHARED_EMAIL_SHARE}""",
        "CREATE SCHEMA crm",
        f"""CREATE TABLE crm.users AS
            WITH base AS (
                SELECT
                    i,
                    unit(i, 6) AS plan_draw,
                    unit(i, 7) AS value_draw,
                    in_recent(i, 10) AS updated_at
                FROM range(1, {users} + 1) AS t(i)
            )
            SELECT
                customer_id_of(i) AS customer_id,
                CASE
                    WHEN shares_email(i) THEN email_of(i - 1)
                    WHEN unit(i, 5) < 0.01 AND NOT shares_email(i + 1) THEN NULL
                    ELSE email_of(i)
                END AS email,
                first_name_of(i) AS first_name,
                last_name_of(i) AS last_name,
                CASE
                    WHEN plan_draw < 0.03 THEN NULL
                    WHEN plan_draw < 0.73 THEN 'free'
                    WHEN plan_draw < 0.95 THEN 'pro'
                    ELSE 'enterprise'
                END AS plan,
                {_pick("i", 8, COUNTRIES)} AS country,
                CASE
                    WHEN plan_draw < 0.03 OR unit(i, 9) < 0.05 THEN NULL
                    WHEN plan_draw < 0.73 THEN round(60 * value_draw * value_draw, 2)
                    WHEN plan_draw < 0.95 THEN round(200 + 3000 * value_draw * value_draw, 2)
                    ELSE round(5000 + 60000 * value_draw * value_draw, 2)
                END::DOUBLE AS lifetime_value,
                unit(i, 11) < 0.55 AS marketing_opt_in,
                -- Cubed so that a visible share signed up shortly before their last update ("new").
                (updated_at - to_days(floor(1095 * pow(unit(i, 12), 3))::INTEGER))::DATE AS signup_date,
                updated_at
            FROM base""",
        "CREATE SCHEMA analytics",
        # Activity is skewed (rank r draws ∝ 1/√r); the stride permutation spreads ranks over customers.
        f"""CREATE TABLE analytics.events AS
            WITH base AS (
                SELECT
                    j,
                    unit(j, 21) AS kind_draw,
                    1 + ({stride} * floor({users} * pow(unit(j, 22), 2))::BIGINT) % {users} AS customer,
                    -- Rising with j, so ids follow time and the table lies in iterator order without a sort
                    -- (incremental windows on event_ts then prune by zone maps).
                    {start} + to_microseconds(
                        least(floor((j + unit(j, 23)) * {year_us} / {events})::BIGINT, {year_us - 1})
                    ) AS event_ts
                FROM range({events}) AS t(j)
            ), kinds AS (
                SELECT
                    *,
                    CASE
                        WHEN kind_draw < 0.52 THEN 'page_view'
                        WHEN kind_draw < 0.67 THEN 'search'
                        WHEN kind_draw < 0.77 THEN 'add_to_cart'
                        WHEN kind_draw < 0.80 THEN 'remove_from_cart'
                        WHEN kind_draw < 0.89 THEN 'login'
                        WHEN kind_draw < 0.99 THEN 'purchase'
                        ELSE 'signup'
                    END AS event_name
                FROM base
            )
            SELECT
                'evt_' || lpad((j + 1)::VARCHAR, {event_id_width}, '0') AS event_id,
                customer_id_of(customer) AS customer_id,
                event_name,
                event_ts,
                CASE event_name
                    WHEN 'page_view' THEN CASE
                        WHEN unit(j, 24) < 0.35 THEN '/products/' || (draw(j, 25) % 5000)::VARCHAR
                        ELSE {_pick("j", 28, PAGES)}
                    END
                    WHEN 'search' THEN '/search'
                END AS page,
                CASE WHEN event_name IN ('add_to_cart', 'remove_from_cart', 'purchase')
                    THEN printf('SKU-%05d', (draw(j, 26) % 5000)::BIGINT) END AS sku,
                CASE WHEN event_name = 'purchase'
                    THEN round(5 + 295 * unit(j, 27) * unit(j, 27), 2)::DOUBLE END AS amount
            FROM kinds""",
        "CREATE SCHEMA marts",
        # Anchored at the demo's as-of rather than current_date, so repeated full syncs see unchanged rows.
        f"""CREATE VIEW marts.customer_segments AS
            WITH activity AS (
                SELECT
                    customer_id,
                    max(event_ts) AS last_seen,
                    count(*) FILTER (WHERE event_name = 'purchase') AS orders_365d,
                    count(*) FILTER (
                        WHERE event_name = 'purchase' AND event_ts >= {end} - INTERVAL 90 DAY
                    ) AS orders_90d,
                    sum(amount) FILTER (
                        WHERE event_name = 'purchase' AND event_ts >= {end} - INTERVAL 90 DAY
                    ) AS revenue_90d
                FROM analytics.events
                WHERE event_ts < {end}
                GROUP BY customer_id
            )
            SELECT
                u.customer_id,
                u.email,
                CASE
                    WHEN u.signup_date >= CAST({end} AS DATE) - 30 THEN 'new'
                    WHEN coalesce(a.revenue_90d, 0) >= 300 OR coalesce(u.lifetime_value, 0) >= 20000
                        THEN 'high_value'
                    WHEN a.last_seen IS NULL OR a.last_seen < {end} - INTERVAL 90 DAY THEN 'dormant'
                    WHEN coalesce(a.orders_90d, 0) = 0 AND a.orders_365d > 0 THEN 'at_risk'
                    ELSE 'active'
                END AS segment,
                coalesce(a.orders_90d, 0)::INTEGER AS orders_90d,
                coalesce(a.revenue_90d, 0)::DOUBLE AS revenue_90d
            FROM crm.users AS u
            LEFT JOIN activity AS a USING (customer_id)""",
    ]


class _Inline(dict):
    """A mapping written on one line, as the mapping entries in the spec are."""


class _SyncFileDumper(yaml.SafeDumper):
    """Block-style YAML with literal SQL blocks, one-line mapping entries and `…Z` timestamps."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never write anchors: a sync file is read by people."""
        return True


_SyncFileDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)
_SyncFileDumper.add_representer(
    _Inline, lambda dumper, value: dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)
)
_SyncFileDumper.add_representer(
    datetime,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:timestamp", value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ),
)


def demo_sync_definitions(warehouse_path: str, *, as_of: datetime) -> list[dict[str, Any]]:
    """The three demo syncs as SPEC §2 documents; `warehouse_path` is relative to the sync files."""
    connection = {"type": "duckdb", "path": warehouse_path}
    historical_start: date = (as_of - timedelta(days=HISTORY_DAYS)).date()
    users_start: date = (as_of - timedelta(days=USER_HISTORY_DAYS)).date()
    return [
        {
            "name": "demo_users",
            "description": "Demo CRM users into profiles, hourly by updated_at",
            "data_type": "user",
            "connection": connection,
            "data_model": {
                "sql": "SELECT customer_id, email, first_name, last_name, plan, country,\n"
                "       lifetime_value, marketing_opt_in, signup_date, updated_at\n"
                "FROM crm.users\n"
            },
            "mapping": [
                _Inline(type="column", column="$unmapped", field="user_attributes.*"),
                _Inline(type="static", value="warehouse", field="user_attributes.source"),
            ],
            "sync": {
                "mode": "incremental",
                "iterator": "updated_at",
                "iterator_type": "timestamp",
                "schedule": "interval",
                "frequency": "hourly",
                "start": as_of,
                "historical_start": users_start,
            },
        },
        {
            "name": "demo_events",
            "description": "Demo web and commerce events onto profiles, daily by event_ts",
            "data_type": "event",
            "connection": connection,
            "data_model": {
                "sql": "SELECT event_id, customer_id, event_name, event_ts, page, sku, amount\n"
                "FROM analytics.events\n"
            },
            "mapping": [
                _Inline(type="column", column="customer_id", field="user_identities.customer_id"),
                _Inline(type="static", value="custom_event", field="events.event_type"),
                _Inline(type="column", column="event_name", field="events.data.event_name"),
                _Inline(type="static", value="other", field="events.data.custom_event_type"),
                _Inline(type="column", column="event_ts", field="events.data.timestamp_unixtime_ms"),
                _Inline(type="column", column="event_id", field="events.data.source_message_id"),
                _Inline(type="column", column="$unmapped", field="events.data.custom_attributes.*"),
            ],
            "sync": {
                "mode": "incremental",
                "iterator": "event_ts",
                "iterator_type": "timestamp",
                "schedule": "interval",
                "frequency": "daily",
                "start": as_of,
                "historical_start": historical_start,
            },
        },
        {
            "name": "demo_segments",
            "description": "Demo customer segments, fully re-read on demand; only changed rows are applied",
            "data_type": "user",
            "connection": connection,
            "data_model": {
                "sql": "SELECT customer_id, email, segment, orders_90d, revenue_90d\n"
                "FROM marts.customer_segments\n"
            },
            "sync": {"mode": "full", "schedule": "on_demand"},
        },
    ]


def write_demo_sync_files(syncs_dir: Path, warehouse: Path, *, as_of: datetime) -> list[Path]:
    """Write `<name>.yaml` for each demo sync into `syncs_dir`, replacing earlier versions."""
    syncs_dir.mkdir(parents=True, exist_ok=True)
    warehouse_path = Path(os.path.relpath(warehouse.resolve(), syncs_dir.resolve())).as_posix()
    paths = []
    for definition in demo_sync_definitions(warehouse_path, as_of=as_of):
        path = syncs_dir / f"{definition['name']}.yaml"
        text = yaml.dump(definition, Dumper=_SyncFileDumper, sort_keys=False, allow_unicode=True, width=110)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        # Renamed into place so a code location reloading mid-write never reads half a file.
        os.replace(tmp, path)
        paths.append(path)
    return paths
