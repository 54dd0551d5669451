"""No poison row: a value no store can hold (a NUL character, an infinite or BC time) rejects its own row,
with its reason, and every other row is delivered, on both profile store backends and run after run."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from wsync_dagster.cli import main
from wsync_dagster.store import ProfileStore
from wsync_dagster_tests.conftest import user_sync
from wsync_dagster_tests.engines import start
from wsync_dagster_tests.engines.postgres import SERVER

NUL_PROBLEM = "holds a NUL character (\\0), which no profile store or destination takes"
TIME_PROBLEM = "a row needs a time from year 1 to 9999 to be read in order"
# A partition's good rows stay under this share: the runs below pass the reject-rate check.
MAX_REJECT_RATE = 0.7

USERS_WITH_A_NUL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'Ada', 'pro', TIMESTAMP '2024-01-01 10:00:00'),
    ({customer_id}, 'bob@example.com', {first_name}, 'free', TIMESTAMP '2024-01-01 11:00:00'),
    ('C003', 'cy@example.com', 'Cy', 'pro', TIMESTAMP '2024-01-02 09:00:00');
"""

EVENTS_WITH_A_NUL = """
CREATE SCHEMA analytics;
CREATE TABLE analytics.events (event_id VARCHAR, customer_id VARCHAR, event_name VARCHAR, occurred_at TIMESTAMP);
INSERT INTO analytics.events VALUES
    ('e1', 'C001', 'purchase', TIMESTAMP '2024-01-01 10:00:00'),
    ({event_id}, 'C002', {event_name}, TIMESTAMP '2024-01-01 11:00:00'),
    ('e3', 'C003', 'signup', TIMESTAMP '2024-01-02 09:00:00');
"""

EVENT_MAPPING = [
    {"type": "column", "column": "event_id", "field": "events.data.source_message_id"},
    {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
    {"type": "column", "column": "event_name", "field": "events.data.event_name"},
    {"type": "column", "column": "occurred_at", "field": "events.data.timestamp_unixtime_ms"},
]

# Where the NUL is: the warehouse's row with it, the sync, and the reason its reject gives.
NUL_CASES = {
    "identity": (
        USERS_WITH_A_NUL.format(customer_id="'C0' || chr(0) || '02'", first_name="'Bob'"),
        "user",
        f"identity customer_id {NUL_PROBLEM}",
    ),
    "attribute": (
        USERS_WITH_A_NUL.format(customer_id="'C002'", first_name="'Bo' || chr(0) || 'b'"),
        "user",
        f"attribute first_name {NUL_PROBLEM}",
    ),
    "event_name": (
        EVENTS_WITH_A_NUL.format(event_id="'e2'", event_name="'page' || chr(0) || '_view'"),
        "event",
        f"event_name {NUL_PROBLEM}",
    ),
    "event_id": (
        EVENTS_WITH_A_NUL.format(event_id="'e' || chr(0) || '2'", event_name="'page_view'"),
        "event",
        f"source_message_id {NUL_PROBLEM}",
    ),
}


def _nul_sync(warehouse: Path, data_type: str) -> dict:
    # Each run reads its own window only, so each reject is filed under the partition that read it.
    if data_type == "user":
        return user_sync(warehouse, checks={"max_reject_rate": MAX_REJECT_RATE}, sync={"lookback": "0s"})
    return {
        **user_sync(
            warehouse, checks={"max_reject_rate": MAX_REJECT_RATE}, sync={"iterator": "occurred_at", "lookback": "0s"}
        ),
        "data_type": "event",
        "data_model": {"sql": "SELECT event_id, customer_id, event_name, occurred_at FROM analytics.events"},
        "mapping": EVENT_MAPPING,
    }


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object | None:
    capsys.readouterr()
    if main(list(argv)) != 0:
        return None
    return json.loads(capsys.readouterr().out)


def _rejects(capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str]]:
    rejects = _json(capsys, "rejects", "crm_users", "--json")
    assert isinstance(rejects, list)
    return sorted((reject["partition"], reject["reason"]) for reject in rejects)


@pytest.mark.parametrize("where", NUL_CASES)
def test_a_nul_character_rejects_its_row_and_every_other_row_is_delivered(
    where: str,
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sql, data_type, reason = NUL_CASES[where]
    write_sync(_nul_sync(make_warehouse(sql), data_type))

    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    assert _rejects(capsys) == [("2024-01-01", reason)]
    ada = _json(capsys, "profile", "--identity", "customer_id=C001", "--json")
    assert isinstance(ada, dict)
    if data_type == "user":
        assert ada["attributes"]["first_name"] == "Ada"
    else:
        assert [event["event_name"] for event in ada["events"]] == ["purchase"]

    # The store still takes deliveries: the next partition, and the first one again.
    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 0
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    assert _rejects(capsys) == [("2024-01-01", reason)]
    cy = _json(capsys, "profile", "--identity", "customer_id=C003", "--json")
    assert isinstance(cy, dict) and cy["identities"]["customer_id"] == "C003"


# Iterator times no window holds. DuckDB's last time is in year 294247, PostgreSQL's in 294276.
ODD_TIMES = {
    "duckdb": ("infinity", "-infinity", "-0043-03-15 00:00:00", "294000-01-01 00:00:00"),
    "postgres": ("infinity", "-infinity", "0044-03-15 00:00:00 BC", "294276-12-31 00:00:00"),
}
ODD_TIME_REASONS = [
    ("2024-01-01", f"iterator updated_at is {problem}: {TIME_PROBLEM}")
    for problem in ("-infinity", "after year 9999", "before year 1", "infinity")
]
GOOD_ROWS = [
    ("C001", "ada@example.com", "2024-01-01 10:00:00"),
    ("C002", "bob@example.com", "2024-01-01 11:00:00"),
    ("C003", "cy@example.com", "2024-01-01 12:00:00"),
    ("C004", "dee@example.com", "2024-01-02 09:00:00"),
    ("C005", "eve@example.com", "2024-01-02 10:00:00"),
    ("C006", "fay@example.com", "2024-01-02 11:00:00"),
]


@pytest.fixture(params=["duckdb", "postgres"])
def odd_time_warehouse(
    request: pytest.FixtureRequest, make_warehouse: Callable[[str], Path], tmp_path: Path
) -> Iterator[dict]:
    """A warehouse whose crm.users holds the good rows and one row for each odd time; its connection."""
    kind = request.param
    rows = [*GOOD_ROWS, *((f"X{n}", f"x{n}@example.com", value) for n, value in enumerate(ODD_TIMES[kind]))]
    values = ", ".join(f"('{customer}', '{email}', TIMESTAMP '{time}')" for customer, email, time in rows)
    table = "CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, updated_at TIMESTAMP)"
    sql = f"CREATE SCHEMA crm; {table}; INSERT INTO crm.users VALUES {values};"
    if kind == "duckdb":
        yield {"type": "duckdb", "path": str(make_warehouse(sql))}
        return
    for engine in start("postgres", tmp_path):  # a scratch database, dropped after the test
        with psycopg2.connect(dbname=engine.database, **SERVER) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
        connection.close()
        yield engine.connection()


def test_an_infinite_or_bc_iterator_time_rejects_its_row_and_the_run_succeeds(
    cli_store: ProfileStore,
    odd_time_warehouse: dict,
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync = user_sync(Path("."), checks={"max_reject_rate": MAX_REJECT_RATE}, connection=odd_time_warehouse)
    sync["data_model"] = {"sql": "SELECT customer_id, email, updated_at FROM crm.users"}
    write_sync(sync)

    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    error = capsys.readouterr().err
    assert "failed" not in error
    # The delay check still warns about the newest real time, never about infinity.
    assert "data delay: the newest updated_at is 2024-01-02T11:00:00+00:00" in error
    assert _rejects(capsys) == ODD_TIME_REASONS
    for customer in ("C001", "C002", "C003"):
        profile = _json(capsys, "profile", "--identity", f"customer_id={customer}", "--json")
        assert isinstance(profile, dict), customer

    # Every window reads them again, and rejects them again: the next run works as well.
    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 0
    assert _rejects(capsys) == sorted(
        [*ODD_TIME_REASONS, *((("2024-01-02", reason) for _, reason in ODD_TIME_REASONS))]
    )
    assert _json(capsys, "profile", "--identity", "customer_id=C004", "--json") is not None


def test_a_delay_check_that_cannot_read_the_newest_time_warns_and_the_run_succeeds(
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Epoch milliseconds past year 9999 are no time Python can hold: the check says so, the run goes on."""
    warehouse = make_warehouse(
        "CREATE SCHEMA crm; CREATE TABLE crm.users (customer_id VARCHAR, updated_ms BIGINT); "
        "INSERT INTO crm.users VALUES ('C001', 1704103200000), ('C002', 900000000000000000);"
    )
    sync = user_sync(warehouse, sync={"iterator": "updated_ms", "iterator_type": "timestamp_unixtime_ms"})
    sync["data_model"] = {"sql": "SELECT customer_id, updated_ms FROM crm.users"}
    write_sync(sync)
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    warning = next(line for line in capsys.readouterr().err.splitlines() if "data_delay" in line)
    assert "data delay: the newest updated_ms cannot be read:" in warning
    assert _json(capsys, "profile", "--identity", "customer_id=C001", "--json") is not None
